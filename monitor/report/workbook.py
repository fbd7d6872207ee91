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

from monitor.detect import hms, parse_iso
from monitor.report.fastrows import splice
from monitor.report.presence import UNKNOWN_DEVICE, Presence, presence, write_presence_sheet
from monitor.fileio import atomic_path
from monitor.report.safe import link_formula
from monitor.report.sheet import (DATE, DATETIME, DURATION, SCORE, TEMPERATURE, Col, is_missing, start_sheet,
                                  write_table)
from monitor.results import MANY_LABELS, VERIFIED_CHOICES, screened_rows

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["Model Name : Version", "Deployment", "File Name", "Label", "Prediction", "Times Heard",
                   "Device ID", "Timestamp", "UTC Offset", "Temperature", "Review Date", "Max Score",
                   "Segments Positive", "Duration"]
DETECTION_COLUMNS = ["Deployment", "File", "Label", "Start (s)", "End (s)", "Start Time", "End Time", "UTC Offset",
                     "Max Score", "Mean Score", "Segments", "Device ID", "Temperature (°C)", "Link", "Verified",
                     "Notes"]
OTHER_REVIEW_COLUMNS = ["Deployment", "File", "Label", "Start (s)", "End (s)", "Why Not In Detections", "Link",
                        "Verified", "Notes", "Reviewed (UTC)"]
DEVICE_COLUMNS = ["Device ID", "Deployments", "Recorder", "Files", "Failed", "Hours Recorded", "First Recording",
                  "Last Recording Ends", "UTC Offsets", "Temperature Min (°C)", "Temperature Max (°C)",
                  "Lowest Battery (V)", "Firmware", "Stop Reasons", "Detections"]
SKIPPED_COLUMNS = ["Deployment", "File", "Status", "Reason"]
REVIEWED_SHEET = "Reviewed below threshold"
TIMES_HEARD_MAX_CHARS = 32000
FOLDER_ROW = 3  # Run info: row 2 is the status, then one row per card folder (the links' base cells)
OFFSETS = "offsets into the file: "


def local(dt: datetime | None) -> datetime | None:
    """Local wall-clock time at the recorder as a naive datetime (what Excel can store)."""
    return None if dt is None else dt.replace(tzinfo=None)


def times_heard(events: Sequence[tuple[float, float]], start: datetime | None) -> str:
    """``19:02:10-19:02:30, ...`` in wall-clock time when the start is known; else offsets that cannot be
    read as clock times: ``offsets into the file: +0:02:10 to +0:02:30, ...``."""
    parts = []
    for a, b in events:
        if start is not None:
            parts.append(f"{start + timedelta(seconds=float(a)):%H:%M:%S}-{start + timedelta(seconds=float(b)):%H:%M:%S}")
        else:
            parts.append(f"+{hms(a)} to +{hms(b)}")
    text = ", ".join(parts)
    if parts and start is None:
        text = OFFSETS + text
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
    """Per-recording lookups from the recordings table, keyed by (deployment, file)."""

    start: dict[tuple[str, str], datetime | None]
    offset: dict[tuple[str, str], str]
    temperature: dict[tuple[str, str], float | None]
    device: dict[tuple[str, str], str]
    folder: dict[tuple[str, str], Any]  # the card (its id; or its folder when cards are unknown) of each file
    folders: list[tuple[Any, str, str]]  # (card, Run info label, link base) in Run info order, one base cell each

    @classmethod
    def from_results(cls, results: Any) -> "Files":
        """One link base per card (the folder a reviewer set, else where the card was last read from)."""
        rec = results.recordings
        keys = list(zip(rec["deployment"].tolist(), rec["file"].tolist()))
        cards = {c.id: c for c in getattr(results, "cards", [])}
        if cards and "card" in rec:
            group = [None if _num(c) is None or int(c) not in cards else int(c) for c in rec["card"].tolist()]
        else:
            group = [_text(b) or None for b in rec["input_dir"].tolist()] if "input_dir" in rec else [None] * len(keys)
        deps: dict[Any, set[str]] = defaultdict(set)
        for (d, _), g in zip(keys, group):
            if g is not None:
                deps[g].add(d)
        folders = []
        for g in sorted(deps, key=str if not cards else int):
            dl = ", ".join(sorted(deps[g]))
            if cards:
                c = cards[g]
                folders.append((g, f"card folder: card {c.id} ({c.name}; {dl})", c.link_base))
            else:
                folders.append((g, f"card folder ({dl})" if dl else "card folder", g))
        return cls(start={k: parse_iso(t) for k, t in zip(keys, rec["start_time"].tolist())},
                   offset={k: _text(o) for k, o in zip(keys, rec["utc_offset"].tolist())},
                   temperature={k: _num(t) for k, t in zip(keys, rec["temperature_c"].tolist())},
                   device={k: _text(d) for k, d in zip(keys, rec["device_id"].tolist())},
                   folder=dict(zip(keys, group)), folders=folders)

    def base_cells(self) -> dict[Any, str]:
        """Card -> its cell in Run info (rows after the status, see ``run_info_rows``)."""
        return {g: f"'Run info'!$B${FOLDER_ROW + i}" for i, (g, _, _) in enumerate(self.folders)}

    def link(self, key: tuple[str, str], cells: Mapping[Any, str]) -> Any:
        """A HYPERLINK formula to the file through its card's Run info cell (None when unknown)."""
        cell = cells.get(self.folder.get(key))
        return link_formula(cell, key[1], PurePosixPath(key[1]).name) if cell else None


def model_name(run: Any) -> str:
    """``name : version``; ensembles join their members with `` + ``."""
    return run.model_name()


def summary_rows(results: Any, files: Files) -> list[list[Any]]:
    """One row per analysed recording per label, in SUMMARY_COLUMNS order; positives from ``results.positives``.
    With more than ``MANY_LABELS`` labels only positive rows are listed. Review Date is the reviewer's."""
    labels, segments, detections, recordings = results.labels, results.segments, results.detections, results.recordings
    name = results.run.model_name()
    positives_only = len(labels) > MANY_LABELS
    events: dict[tuple[str, str, str], list[tuple[float, float]]] = defaultdict(list)
    for d, f, lab, a, b in zip(detections["deployment"].tolist(), detections["file"].tolist(),
                               detections["label"].tolist(), detections["start_s"].tolist(),
                               detections["end_s"].tolist()):
        events[(d, f, lab)].append((a, b))
    max_score: dict[str, dict[tuple[str, str], float]] = {}
    n_pos: dict[str, dict[tuple[str, str], int]] = {}
    if len(segments):
        keyed = segments.assign(_k=list(zip(segments["deployment"], segments["file"])))
        screened = screened_rows(segments)  # best scores are the model's: rows only a screen scored are left out
        by = (keyed if screened is None else keyed[~screened]).groupby("_k", sort=False)
        for j, lab in enumerate(labels):
            if positives_only and not results.positives[:, j].any():
                continue
            max_score[lab] = by[lab].max().to_dict()
            n_pos[lab] = keyed["_k"][results.positives[:, j]].value_counts().to_dict()
    rows = []
    ok = recordings[recordings["status"].isin(["ok", "missing"]) & (recordings["segments"] > 0)]
    for d, f, dur in zip(ok["deployment"].tolist(), ok["file"].tolist(), ok["duration_s"].tolist()):
        k = (d, f)
        start = files.start.get(k)
        dd = _num(dur)
        for lab in labels:
            ev = sorted(events.get((d, f, lab), []))
            if positives_only and not ev:
                continue
            rows.append([name, d, f, lab, "Positive" if ev else "Negative", times_heard(ev, local(start)),
                         files.device.get(k, ""), local(start), files.offset.get(k, "") if start else "",
                         files.temperature.get(k), _date(results.review_dates.get((d, f, lab))),
                         _num(max_score.get(lab, {}).get(k)), int(n_pos.get(lab, {}).get(k, 0)),
                         timedelta(seconds=round(dd, 3)) if dd is not None else None])
    return rows


def _date(text: str | None) -> Any:
    """A stored Review Date: a date when it is one, else the text as the reviewer typed it."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def _verdict(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def detection_rows(detections: Any, files: Files, cells: Mapping[str, str]) -> list[list[Any]]:
    """One row per event, in DETECTION_COLUMNS order, with the reviewers' Verified and Notes."""
    rows = []
    cols = [detections[c].tolist() for c in ("deployment", "file", "label", "start_s", "end_s", "start_time",
                                             "end_time", "score_max", "score_mean", "segments", "device_id",
                                             "verified", "notes")]
    links: dict[tuple[str, str], Any] = {}
    for d, f, lab, a, b, st_text, en_text, smax, smean, nseg, dev, ver, note in zip(*cols):
        k = (d, f)
        start = local(files.start.get(k))
        if start is not None:
            t0, t1 = start + timedelta(seconds=float(a)), start + timedelta(seconds=float(b))
        else:  # a file missing from recordings: fall back on the detection's own times
            t0, t1 = local(parse_iso(st_text)), local(parse_iso(en_text))
        if k not in links:
            links[k] = files.link(k, cells)
        rows.append([d, f, lab, float(a), float(b), t0, t1, files.offset.get(k, "") if t0 else "", _num(smax),
                     _num(smean), int(nseg), _text(dev), files.temperature.get(k), links[k], _verdict(ver),
                     _verdict(note)])
    return rows


def other_review_rows(other: Any, files: Files, cells: Mapping[str, str]) -> list[list[Any]]:
    """Reviews that are on no detection row now (below the threshold, merged, pruned): never dropped."""
    return [[d, f, lab, float(a), float(b), why, files.link((d, f), cells), _verdict(v), _verdict(n),
             local(parse_iso(u))]
            for d, f, lab, a, b, why, v, n, u in zip(other["deployment"], other["file"], other["label"],
                                                     other["start_s"], other["end_s"], other["why"],
                                                     other["verified"], other["notes"], other["updated_at"])]


def device_rows(recordings: Any, detections: Any, files: Files) -> list[list[Any]]:
    """Per device (ok and failed files): deployments, files, hours, first/last, temperature, battery, firmware."""
    found = recordings[recordings["status"] != "skipped"]
    det_count = Counter(files.device.get((d, f)) or _text(dev) or UNKNOWN_DEVICE
                        for d, f, dev in zip(detections["deployment"].tolist(), detections["file"].tolist(),
                                             detections["device_id"].tolist()))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    stop = found["stop_reason"].tolist() if "stop_reason" in found else [""] * len(found)
    for r, s in zip(found[["deployment", "file", "status", "recorder", "device_id", "duration_s", "temperature_c",
                           "battery_v", "firmware"]].to_dict("records"), stop):
        r["stop_reason"] = s
        groups[_text(r["device_id"]) or UNKNOWN_DEVICE].append(r)
    rows = []
    for dev in sorted(groups):
        g = groups[dev]
        ok = [r for r in g if r["status"] in ("ok", "missing")]
        starts = [(files.start.get((r["deployment"], r["file"])), _num(r["duration_s"]) or 0.0) for r in g]
        starts = [(local(t), d) for t, d in starts if t is not None]
        temps = [t for t in (_num(r["temperature_c"]) for r in g) if t is not None]
        volts = [v for v in (_num(r["battery_v"]) for r in g) if v is not None]
        stops = Counter(_text(r["stop_reason"]) for r in g if _text(r["stop_reason"]))
        offsets = sorted({files.offset.get((r["deployment"], r["file"]), "") for r in g} - {""})
        rows.append([
            dev, ", ".join(sorted({_text(r["deployment"]) for r in g} - {""})),
            ", ".join(sorted({_text(r["recorder"]) for r in g} - {""})), len(g),
            sum(r["status"] == "failed" for r in g),
            round(sum(_num(r["duration_s"]) or 0.0 for r in ok) / 3600, 3),
            min(t for t, _ in starts) if starts else None,
            max(t + timedelta(seconds=d) for t, d in starts) if starts else None, ", ".join(offsets),
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


def run_info_rows(run: Any, files: Files) -> list[list[Any]]:
    """Run info: the status first (an interrupted run says so), one row per card folder (every link in the
    workbook is built from these cells: change one when the card is mounted elsewhere), warnings, then
    every run.json field."""
    d = run.to_json()
    status = d.pop("status")
    rows = [["status", status]]
    rows += [[label, base] for _, label, base in files.folders]
    rows += [["warning", w] for w in d.pop("warnings", [])]
    return rows + [list(kv) for kv in flatten(d)]


def _verified_validation(ws: Any, col: str, n: int) -> None:
    from openpyxl.worksheet.datavalidation import DataValidation

    dv = DataValidation(type="list", formula1='"' + ",".join(VERIFIED_CHOICES) + '"', allow_blank=True,
                        showErrorMessage=True, errorTitle="Verified", error="Choose yes, no or unsure",
                        showInputMessage=True, promptTitle="Verified", prompt="yes, no or unsure")
    dv.add(f"{col}2:{col}{max(n, 1) + 1}")
    ws.data_validations.append(dv)


def write_workbook(path: Path, results: Any, presence_tables: Presence | None = None, fast_rows: bool = True) -> Path:
    """Build every sheet from ``results`` and save atomically to ``path`` (``presence_tables``: precomputed).

    ``fast_rows=False`` writes every row through openpyxl's cells (the slow reference the tests and
    ``benchmarks/report.py`` compare the spliced rows with)."""
    from openpyxl import Workbook
    from openpyxl.formatting.rule import ColorScaleRule
    from openpyxl.utils import get_column_letter

    run = results.run
    files = Files.from_results(results)
    wb = Workbook(write_only=True)
    wb.properties.creator = f"monitor {run.package_version}".strip()
    wb.properties.title = "Species detections for review"
    wb.properties.identifier = run.report_build or None

    pending: list | None = [] if fast_rows else None  # big tables' rows, spliced in as plain XML after saving (fastrows)
    cells = files.base_cells()
    rows = summary_rows(results, files)
    many = len(results.labels) > MANY_LABELS
    ws = start_sheet(wb, "Summary")
    write_table(ws, [Col("Model Name : Version"), Col("Deployment"), Col("File Name"), Col("Label"),
                     Col(f"Prediction (positives only: {len(results.labels)} labels)" if many else "Prediction",
                         width=24 if many else 11),
                     Col("Times Heard", width=44, wrap=True), Col("Device ID"), Col("Timestamp", DATETIME),
                     Col("UTC Offset", width=11), Col("Temperature", TEMPERATURE), Col("Review Date", DATE),
                     Col("Max Score", SCORE), Col("Segments Positive", raw=True), Col("Duration", DURATION)], rows,
                freeze="D2", pending=pending)

    rows = detection_rows(results.detections, files, cells)
    ws = start_sheet(wb, "Detections")
    n = write_table(ws, [Col("Deployment"), Col("File"), Col("Label"), Col("Start (s)", "0.0"), Col("End (s)", "0.0"),
                         Col("Start Time", DATETIME), Col("End Time", DATETIME), Col("UTC Offset", width=11),
                         Col("Max Score", SCORE), Col("Mean Score", SCORE), Col("Segments", width=10, raw=True),
                         Col("Device ID", indent=True), Col("Temperature (°C)", TEMPERATURE), Col("Link", link=True),
                         Col("Verified", width=10), Col("Notes", width=40)], rows, freeze="D2",
                    pending=pending)
    _verified_validation(ws, get_column_letter(DETECTION_COLUMNS.index("Verified") + 1), n)
    if n:
        score = get_column_letter(DETECTION_COLUMNS.index("Max Score") + 1)
        ws.conditional_formatting.add(f"{score}2:{score}{n + 1}", ColorScaleRule(
            start_type="num", start_value=0, start_color="FFFFFF", end_type="num", end_value=1, end_color="63BE7B"))

    rows = other_review_rows(results.other_reviews, files, cells)
    if rows:
        ws = start_sheet(wb, REVIEWED_SHEET)
        n = write_table(ws, [Col("Deployment"), Col("File"), Col("Label"), Col("Start (s)", "0.0"),
                             Col("End (s)", "0.0"), Col("Why Not In Detections", width=50, wrap=True),
                             Col("Link", link=True), Col("Verified", width=10), Col("Notes", width=40),
                             Col("Reviewed (UTC)", DATETIME)], rows, freeze="D2")
        _verified_validation(ws, get_column_letter(OTHER_REVIEW_COLUMNS.index("Verified") + 1), n)

    if presence_tables is None:
        presence_tables = presence(results)
    write_presence_sheet(wb, presence_tables)

    ws = start_sheet(wb, "Devices")
    write_table(ws, [Col("Device ID"), Col("Deployments"), Col("Recorder"), Col("Files"), Col("Failed"),
                     Col("Hours Recorded", "0.00"), Col("First Recording", DATETIME),
                     Col("Last Recording Ends", DATETIME), Col("UTC Offsets", width=11),
                     Col("Temperature Min (°C)", TEMPERATURE),
                     Col("Temperature Max (°C)", TEMPERATURE), Col("Lowest Battery (V)", "0.0"), Col("Firmware"),
                     Col("Stop Reasons"), Col("Detections")],
                device_rows(results.recordings, results.detections, files), freeze="B2")

    rec = results.recordings
    skipped = rec[rec["status"] != "ok"]
    ws = start_sheet(wb, "Skipped files")
    write_table(ws, [Col("Deployment"), Col("File"), Col("Status", width=9), Col("Reason", width=70)],
                [[d, f, s, _text(r)] for d, f, s, r in zip(skipped["deployment"], skipped["file"], skipped["status"],
                                                           skipped["reason"])])

    ws = start_sheet(wb, "Run info", landscape=False)
    write_table(ws, [Col("Key", width=32), Col("Value", width=90)], run_info_rows(run, files), autofilter=False)

    with atomic_path(path) as tmp:
        wb.save(tmp)
        splice(tmp, pending or [])
    return path
