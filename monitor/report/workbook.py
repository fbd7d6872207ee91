"""``report.xlsx``: the workbook a field biologist reviews, written in openpyxl's write-only mode.

Sheets: Summary (the original fork's columns, one row per recording per label), Detections (one row
per event, a hyperlink to the file, a Verified drop-down and Notes for the reviewer), Presence (per
day and hour of day, native charts), Devices, Skipped files, Run info. Times are the recorder's local
wall-clock time as real Excel datetimes (Excel has no time zones: the UTC offset has its own column).
Untrusted text is never written as a formula (``safe.text_cell``).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

from monitor.detect import parse_iso
from monitor.report.fastrows import splice
from monitor.report.presence import UNKNOWN_DEVICE, Presence, presence, write_presence_sheet
from monitor.report.safe import atomic_path
from monitor.report.sheet import (DATE, DATETIME, DURATION, SCORE, TEMPERATURE, Col, is_missing, start_sheet,
                                  write_table)

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["Model Name : Version", "File Name", "Label", "Prediction", "Times Heard", "Device ID",
                   "Timestamp", "Temperature", "Review Date", "Max Score", "Segments Positive", "Duration"]
DETECTION_COLUMNS = ["File", "Label", "Start (s)", "End (s)", "Start Time", "End Time", "UTC Offset", "Max Score",
                     "Mean Score", "Segments", "Device ID", "Temperature (°C)", "Link", "Verified", "Notes"]
DEVICE_COLUMNS = ["Device ID", "Recorder", "Files", "Failed", "Hours Recorded", "First Recording",
                  "Last Recording Ends", "Temperature Min (°C)", "Temperature Max (°C)", "Lowest Battery (V)",
                  "Firmware", "Stop Reasons", "Detections"]
VERIFIED_CHOICES = ("yes", "no", "unsure")
TIMES_HEARD_MAX_CHARS = 32000


def local(dt: datetime | None) -> datetime | None:
    """Local wall-clock time at the recorder as a naive datetime (what Excel can store)."""
    return None if dt is None else dt.replace(tzinfo=None)


def hms(seconds: float) -> str:
    """Offset into a recording as ``H:MM:SS`` (rounded to the second)."""
    s = int(math.floor(float(seconds) + 0.5))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def times_heard(events: Sequence[tuple[float, float]], start: datetime | None) -> str:
    """``19:02:10-19:02:30, ...`` in wall-clock time when the start is known, else offsets ``0:02:10-0:02:30``."""
    parts = []
    for a, b in events:
        if start is not None:
            parts.append(f"{start + timedelta(seconds=float(a)):%H:%M:%S}-{start + timedelta(seconds=float(b)):%H:%M:%S}")
        else:
            parts.append(f"{hms(a)}-{hms(b)}")
    text = ", ".join(parts)
    if len(text) > TIMES_HEARD_MAX_CHARS:  # an Excel cell holds 32,767 characters
        cut = text.rfind(", ", 0, TIMES_HEARD_MAX_CHARS)
        shown = text[:cut].count(", ") + 1
        text = f"{text[:cut]}, ... ({len(parts) - shown} more in the Detections sheet)"
    return text


def _text(v: Any) -> str:
    return "" if is_missing(v) else str(v)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


@dataclass
class Files:
    """Per-file lookups from the recordings table (file -> value)."""

    start: dict[str, datetime | None]
    offset: dict[str, str]
    temperature: dict[str, float | None]
    device: dict[str, str]

    @classmethod
    def from_recordings(cls, rec: Any) -> "Files":
        files = rec["file"].tolist()
        return cls(start={f: parse_iso(t) for f, t in zip(files, rec["start_time"].tolist())},
                   offset={f: _text(o) for f, o in zip(files, rec["utc_offset"].tolist())},
                   temperature={f: _num(t) for f, t in zip(files, rec["temperature_c"].tolist())},
                   device={f: _text(d) for f, d in zip(files, rec["device_id"].tolist())})


def model_name(run_info: Mapping[str, Any]) -> str:
    """``name : version``; ensembles join their members with `` + ``."""
    models = [m for m in run_info.get("models") or [] if isinstance(m, dict)] or [run_info.get("model") or {}]
    return " + ".join(f"{m.get('name', '')} : {m.get('version', '')}" for m in models)


def summary_rows(recordings: Any, segments: Any, detections: Any, labels: Sequence[str],
                 thresholds: Mapping[str, float], files: Files, run_info: Mapping[str, Any]) -> list[list[Any]]:
    """One row per ok recording per label, in SUMMARY_COLUMNS order."""
    name = model_name(run_info)
    review = local(parse_iso(run_info.get("ended") or run_info.get("started")))
    review = review.replace(hour=0, minute=0, second=0, microsecond=0) if review else None
    events: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for f, lab, a, b in zip(detections["file"].tolist(), detections["label"].tolist(),
                            detections["start_s"].tolist(), detections["end_s"].tolist()):
        events[(f, lab)].append((a, b))
    max_score: dict[str, dict[str, float]] = {}
    n_pos: dict[str, dict[str, int]] = {}
    if len(segments):
        by_file = segments.groupby("file", sort=False)
        for lab in labels:
            max_score[lab] = by_file[lab].max().to_dict()
            pos = segments[lab] >= float(thresholds.get(lab, 0.5))
            n_pos[lab] = pos.groupby(segments["file"], sort=False).sum().to_dict()
    rows = []
    ok = recordings[recordings["status"] == "ok"]
    for f, dur in zip(ok["file"].tolist(), ok["duration_s"].tolist()):
        start = files.start.get(f)
        d = _num(dur)
        for lab in labels:
            ev = sorted(events.get((f, lab), []))
            rows.append([name, f, lab, "Positive" if ev else "Negative", times_heard(ev, local(start)),
                         files.device.get(f, ""), local(start), files.temperature.get(f), review,
                         _num(max_score.get(lab, {}).get(f)), int(n_pos.get(lab, {}).get(f, 0)),
                         timedelta(seconds=round(d, 3)) if d is not None else None])
    return rows


def detection_rows(detections: Any, files: Files, input_dir: Path) -> list[list[Any]]:
    """One row per event, in DETECTION_COLUMNS order (Verified and Notes left empty)."""
    base = Path(input_dir).absolute()
    uris: dict[str, tuple[str, str]] = {}
    rows = []
    cols = [detections[c].tolist() for c in ("file", "label", "start_s", "end_s", "start_time", "end_time",
                                             "score_max", "score_mean", "segments", "device_id")]
    for f, lab, a, b, st_text, en_text, smax, smean, nseg, dev in zip(*cols):
        start = local(files.start.get(f))
        if start is not None:
            t0, t1 = start + timedelta(seconds=float(a)), start + timedelta(seconds=float(b))
        else:  # a file missing from recordings: fall back on the detection's own times
            t0, t1 = local(parse_iso(st_text)), local(parse_iso(en_text))
        if f not in uris:
            uris[f] = (PurePosixPath(f).name, (base / f).as_uri())
        rows.append([f, lab, float(a), float(b), t0, t1, files.offset.get(f, ""), _num(smax), _num(smean),
                     int(nseg), _text(dev), files.temperature.get(f), uris[f], None, None])
    return rows


def device_rows(recordings: Any, detections: Any, files: Files) -> list[list[Any]]:
    """Per device (ok and failed files): files, hours, first/last, temperature, battery, firmware, stops."""
    found = recordings[recordings["status"] != "skipped"]
    det_count = Counter(files.device.get(f) or _text(d) or UNKNOWN_DEVICE
                        for f, d in zip(detections["file"].tolist(), detections["device_id"].tolist()))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stop = found["stop_reason"].tolist() if "stop_reason" in found else [""] * len(found)
    for r, s in zip(found[["file", "status", "recorder", "device_id", "duration_s", "temperature_c", "battery_v",
                           "firmware"]].to_dict("records"), stop):
        r["stop_reason"] = s
        groups[_text(r["device_id"]) or UNKNOWN_DEVICE].append(r)
    rows = []
    for dev in sorted(groups):
        g = groups[dev]
        ok = [r for r in g if r["status"] == "ok"]
        starts = [(files.start.get(r["file"]), _num(r["duration_s"]) or 0.0) for r in g]
        starts = [(local(t), d) for t, d in starts if t is not None]
        temps = [t for t in (_num(r["temperature_c"]) for r in g) if t is not None]
        volts = [v for v in (_num(r["battery_v"]) for r in g) if v is not None]
        stops = Counter(_text(r["stop_reason"]) for r in g if _text(r["stop_reason"]))
        rows.append([
            dev, ", ".join(sorted({_text(r["recorder"]) for r in g} - {""})), len(g), len(g) - len(ok),
            round(sum(_num(r["duration_s"]) or 0.0 for r in ok) / 3600, 3),
            min(t for t, _ in starts) if starts else None,
            max(t + timedelta(seconds=d) for t, d in starts) if starts else None,
            min(temps) if temps else None, max(temps) if temps else None, min(volts) if volts else None,
            ", ".join(sorted({_text(r["firmware"]) for r in g} - {""})),
            "; ".join(f"{s} ({n} file{'s' if n > 1 else ''})" for s, n in sorted(stops.items())),
            det_count.get(dev, 0),
        ])
    return rows


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested run info -> (dotted key, scalar) rows; lists of scalars joined with ', '."""
    if isinstance(d, dict):
        out: list[tuple[str, Any]] = []
        for k, v in d.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, (list, tuple)):
        if all(isinstance(x, (str, int, float, bool)) or x is None for x in d):
            return [(prefix, ", ".join("" if x is None else str(x) for x in d))]
        out = []
        for i, x in enumerate(d):
            out += flatten(x, f"{prefix}[{i}]")
        return out
    if d is None or isinstance(d, (str, int, float)):
        return [(prefix, "" if d is None else d)]
    return [(prefix, json.dumps(d, default=str))]


def write_workbook(path: Path, recordings: Any, segments: Any, detections: Any, run_info: Mapping[str, Any],
                   input_dir: Path, presence_tables: Presence | None = None, fast_rows: bool = True) -> Path:
    """Build every sheet and save atomically to ``path`` (``presence_tables``: precomputed, optional).

    ``fast_rows=False`` writes every row through openpyxl's cells (the slow reference the tests and
    ``benchmarks/report.py`` compare the spliced rows with)."""
    from openpyxl import Workbook
    from openpyxl.formatting.rule import ColorScaleRule
    from openpyxl.utils import get_column_letter
    from openpyxl.worksheet.datavalidation import DataValidation

    labels = list(run_info.get("labels") or [])
    thresholds = dict(run_info.get("thresholds") or {})
    files = Files.from_recordings(recordings)
    wb = Workbook(write_only=True)
    wb.properties.creator = f"monitor {run_info.get('package_version', '')}".strip()
    wb.properties.title = "Species detections for review"

    pending: list | None = [] if fast_rows else None  # big tables' rows, spliced in as plain XML after saving (fastrows)
    rows = summary_rows(recordings, segments, detections, labels, thresholds, files, run_info)
    ws = start_sheet(wb, "Summary")
    write_table(ws, [Col("Model Name : Version"), Col("File Name"), Col("Label"), Col("Prediction", width=11),
                     Col("Times Heard", width=44, wrap=True), Col("Device ID"), Col("Timestamp", DATETIME),
                     Col("Temperature", TEMPERATURE), Col("Review Date", DATE), Col("Max Score", SCORE),
                     Col("Segments Positive", raw=True), Col("Duration", DURATION)], rows, freeze="C2",
                pending=pending)

    rows = detection_rows(detections, files, input_dir)
    ws = start_sheet(wb, "Detections")
    n = write_table(ws, [Col("File"), Col("Label"), Col("Start (s)", "0.0"), Col("End (s)", "0.0"),
                         Col("Start Time", DATETIME), Col("End Time", DATETIME), Col("UTC Offset", width=11),
                         Col("Max Score", SCORE), Col("Mean Score", SCORE), Col("Segments", width=10, raw=True),
                         Col("Device ID", indent=True), Col("Temperature (°C)", TEMPERATURE), Col("Link", link=True),
                         Col("Verified", width=10, raw=True), Col("Notes", width=40, raw=True)], rows, freeze="C2",
                    pending=pending)
    vcol = get_column_letter(DETECTION_COLUMNS.index("Verified") + 1)
    dv = DataValidation(type="list", formula1='"' + ",".join(VERIFIED_CHOICES) + '"', allow_blank=True,
                        showErrorMessage=True, errorTitle="Verified", error="Choose yes, no or unsure",
                        showInputMessage=True, promptTitle="Verified", prompt="yes, no or unsure")
    dv.add(f"{vcol}2:{vcol}{max(n, 1) + 1}")
    ws.data_validations.append(dv)
    if n:
        score = get_column_letter(DETECTION_COLUMNS.index("Max Score") + 1)
        ws.conditional_formatting.add(f"{score}2:{score}{n + 1}", ColorScaleRule(
            start_type="num", start_value=0, start_color="FFFFFF", end_type="num", end_value=1, end_color="63BE7B"))

    if presence_tables is None:
        presence_tables = presence(segments, detections, recordings, labels, thresholds, files.start)
    write_presence_sheet(wb, presence_tables)

    ws = start_sheet(wb, "Devices")
    write_table(ws, [Col("Device ID"), Col("Recorder"), Col("Files"), Col("Failed"), Col("Hours Recorded", "0.00"),
                     Col("First Recording", DATETIME), Col("Last Recording Ends", DATETIME),
                     Col("Temperature Min (°C)", TEMPERATURE), Col("Temperature Max (°C)", TEMPERATURE),
                     Col("Lowest Battery (V)", "0.0"), Col("Firmware"), Col("Stop Reasons"), Col("Detections")],
                device_rows(recordings, detections, files), freeze="B2")

    skipped = recordings[recordings["status"] != "ok"]
    ws = start_sheet(wb, "Skipped files")
    write_table(ws, [Col("File"), Col("Status", width=9), Col("Reason", width=70)],
                [[f, s, _text(r)] for f, s, r in zip(skipped["file"], skipped["status"], skipped["reason"])])

    ws = start_sheet(wb, "Run info", landscape=False)
    write_table(ws, [Col("Key", width=32), Col("Value", width=90)], [list(kv) for kv in flatten(dict(run_info))],
                autofilter=False)

    with atomic_path(path) as tmp:
        wb.save(tmp)
        splice(tmp, pending or [])
    return path
