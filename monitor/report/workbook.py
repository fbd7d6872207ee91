"""``report.xlsx``: the workbook a field biologist reviews, written in openpyxl's write-only mode.

Sheets: Summary (the original fork's columns, one row per recording per label), Detections (one row
per event, with a Verified drop-down and Notes for the reviewer), Presence (per day and hour of day,
with a native chart), Devices, Skipped files, Run info. Untrusted text is never written as a formula.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from monitor.report.safe import atomic_path

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["Model Name : Version", "File Name", "Label", "Prediction", "Times Heard", "Device ID", "Timestamp",
                   "Temperature", "Review Date", "Max Score", "Segments Positive", "Duration"]
DETECTION_COLUMNS = ["File", "Label", "Start (s)", "End (s)", "Start Time", "End Time", "UTC Offset", "Max Score",
                     "Mean Score", "Segments", "Device ID", "Temperature (°C)", "Link", "Verified", "Notes"]
VERIFIED_CHOICES = ("yes", "no", "unsure")


def _text_cell(ws, value: Any) -> Any:
    """Strings that openpyxl would store as a formula become explicit text cells (shown verbatim)."""
    if isinstance(value, str) and value.startswith("="):
        from openpyxl.cell import WriteOnlyCell

        c = WriteOnlyCell(ws, value=None)
        c._value, c.data_type = value, "s"
        return c
    return value


def _parse(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _naive(dt: datetime | None) -> datetime | None:
    """Excel has no time zones: local wall-clock time (the UTC offset goes in its own column)."""
    return None if dt is None else dt.replace(tzinfo=None)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def times_heard(events: Sequence[tuple[float, float]], start: datetime | None) -> str:
    """``19:02:10-19:02:30, ...`` in wall-clock time when the start is known, else offsets ``0:02:10-0:02:30``."""
    from datetime import timedelta

    parts = []
    for a, b in events:
        if start is not None:
            parts.append(f"{(start + timedelta(seconds=a)):%H:%M:%S}-{(start + timedelta(seconds=b)):%H:%M:%S}")
        else:
            parts.append(f"{_hms(a)}-{_hms(b)}")
    return ", ".join(parts)


class _Sheet:
    """A write-only sheet: header styled once, widths from header and a sample of values, frozen, filtered."""

    def __init__(self, wb, title: str, columns: list[str], rows: list[list[Any]], widths: dict[str, float] | None = None,
                 formats: dict[str, str] | None = None):
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.styles import Alignment, Font, PatternFill
        from openpyxl.utils import get_column_letter

        ws = wb.create_sheet(title)
        self.ws = ws
        sample = rows[:200]
        for j, name in enumerate(columns):
            letter = get_column_letter(j + 1)
            width = (widths or {}).get(name)
            if width is None:
                lens = [len(str(r[j])) for r in sample if r[j] is not None] or [0]
                width = min(60, max(len(name) + 2, sorted(lens)[int(0.9 * (len(lens) - 1))] + 2, 8))
            ws.column_dimensions[letter].width = width
        ws.freeze_panes = "A2"
        head_font, head_fill = Font(bold=True, color="FFFFFF"), PatternFill("solid", fgColor="305496")
        header = []
        for name in columns:
            c = WriteOnlyCell(ws, value=name)
            c.font, c.fill, c.alignment = head_font, head_fill, Alignment(vertical="center", wrap_text=True)
            header.append(c)
        ws.append(header)
        fmt_idx = {columns.index(k): v for k, v in (formats or {}).items() if k in columns}
        for r in rows:
            out = [_text_cell(ws, v) for v in r]
            for j, f in fmt_idx.items():
                if out[j] is not None and not isinstance(out[j], str):
                    c = WriteOnlyCell(ws, value=out[j])
                    c.number_format = f
                    out[j] = c
            ws.append(out)
        last = get_column_letter(len(columns))
        ws.auto_filter.ref = f"A1:{last}{len(rows) + 1}"
        ws.print_options.gridLines = True
        ws.page_setup.orientation = "landscape"
        ws.page_setup.fitToWidth = 1
        ws.page_setup.fitToHeight = 0
        ws.sheet_properties.pageSetUpPr.fitToPage = True


def _num(v: Any) -> Any:
    try:
        import math

        f = float(v)
        return None if math.isnan(f) else f
    except (TypeError, ValueError):
        return None


def write_workbook(path: Path, recordings, segments, detections, run_info: dict[str, Any], input_dir: Path) -> Path:
    """Build every sheet and save atomically to ``path``."""
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.worksheet.datavalidation import DataValidation

    labels = list(run_info.get("labels", []))
    thr = run_info.get("thresholds", {})
    model = run_info.get("model", {})
    model_name = f"{model.get('name', '')} : {model.get('version', '')}"
    review = _parse(run_info.get("ended") or run_info.get("started"))
    review = _naive(review).replace(hour=0, minute=0, second=0, microsecond=0) if review else None
    rec = recordings.set_index("file", drop=False) if len(recordings) else recordings
    ok = recordings[recordings["status"] == "ok"] if len(recordings) else recordings
    starts = {r.file: _parse(r.start_time) for r in recordings.itertuples()}

    wb = Workbook(write_only=True)

    # Summary: one row per ok recording per label
    ev = {}
    for r in detections.itertuples():
        ev.setdefault((r.file, r.label), []).append((r.start_s, r.end_s))
    pos_counts, max_scores = {}, {}
    if len(segments):
        for lab in labels:
            g = segments.groupby("file")[lab]
            max_scores[lab] = g.max().to_dict()
            pos_counts[lab] = (segments[lab] >= thr.get(lab, 0.5)).groupby(segments["file"]).sum().to_dict()
    rows = []
    for r in ok.itertuples():
        for lab in labels:
            events = ev.get((r.file, lab), [])
            rows.append([
                model_name, r.file, lab, "Positive" if events else "Negative", times_heard(events, starts[r.file]),
                r.device_id or None, _naive(starts[r.file]), _num(r.temperature_c), review,
                _num(max_scores.get(lab, {}).get(r.file)), int(pos_counts.get(lab, {}).get(r.file, 0)),
                _hms(float(r.duration_s)) if _num(r.duration_s) is not None else None,
            ])
    _Sheet(wb, "Summary", SUMMARY_COLUMNS, rows, widths={"Times Heard": 45, "Model Name : Version": 26},
           formats={"Timestamp": "yyyy-mm-dd hh:mm:ss", "Review Date": "yyyy-mm-dd", "Temperature": "0.0",
                    "Max Score": "0.000"})

    # Detections
    from datetime import timedelta

    rows = []
    for r in detections.itertuples():
        st = starts.get(r.file)
        meta = rec.loc[r.file] if len(rec) and r.file in rec.index else None
        rows.append([
            r.file, r.label, float(r.start_s), float(r.end_s),
            _naive(st + timedelta(seconds=float(r.start_s))) if st else None,
            _naive(st + timedelta(seconds=float(r.end_s))) if st else None,
            (meta["utc_offset"] if meta is not None else "") or None, float(r.score_max), float(r.score_mean),
            int(r.segments), r.device_id or None, _num(meta["temperature_c"]) if meta is not None else None,
            Path(r.file).name, None, None,
        ])
    det = _Sheet(wb, "Detections", DETECTION_COLUMNS, [], widths={"Notes": 40, "Verified": 10, "Link": 24})
    ws = det.ws
    fmts = {"Start Time": "yyyy-mm-dd hh:mm:ss", "End Time": "yyyy-mm-dd hh:mm:ss", "Max Score": "0.000",
            "Mean Score": "0.000", "Start (s)": "0.0", "End (s)": "0.0", "Temperature (°C)": "0.0"}
    idx = {DETECTION_COLUMNS.index(k): v for k, v in fmts.items()}
    link_col = DETECTION_COLUMNS.index("Link")
    for r in rows:
        out = [_text_cell(ws, v) for v in r]
        for j, f in idx.items():
            if out[j] is not None:
                c = WriteOnlyCell(ws, value=out[j])
                c.number_format = f
                out[j] = c
        c = _text_cell(ws, r[link_col])
        c = c if hasattr(c, "hyperlink") else WriteOnlyCell(ws, value=c)
        target = (Path(input_dir) / r[0]).resolve()
        c.hyperlink = target.as_uri()
        c.style = "Hyperlink"
        out[link_col] = c
        ws.append(out)
    from openpyxl.utils import get_column_letter

    n = len(rows) + 1
    ws.auto_filter.ref = f"A1:{get_column_letter(len(DETECTION_COLUMNS))}{n}"
    vcol = get_column_letter(DETECTION_COLUMNS.index("Verified") + 1)
    dv = DataValidation(type="list", formula1='"' + ",".join(VERIFIED_CHOICES) + '"', allow_blank=True,
                        showErrorMessage=True, errorTitle="Verified", error="Choose yes, no or unsure")
    dv.add(f"{vcol}2:{vcol}{max(n, 2) + 1000}")
    ws.data_validations.append(dv)  # write-only sheets have no add_data_validation

    _presence(wb, segments, detections, recordings, labels, thr, starts)
    _devices(wb, recordings)
    skipped = recordings[recordings["status"] != "ok"] if len(recordings) else recordings
    _Sheet(wb, "Skipped files", ["File", "Status", "Reason"],
           [[r.file, r.status, r.reason] for r in skipped.itertuples()], widths={"Reason": 70, "File": 50})
    _Sheet(wb, "Run info", ["Key", "Value"], [[k, v] for k, v in _flatten(run_info)], widths={"Key": 34, "Value": 90})

    with atomic_path(path) as tmp:
        wb.save(tmp)
    return path


def _presence(wb, segments, detections, recordings, labels, thr, starts) -> None:
    """Detections and positive segments per day and per hour of day, by device and label, plus a chart."""
    from datetime import timedelta

    from openpyxl.chart import BarChart, Reference

    devices = dict(zip(recordings["file"], recordings["device_id"])) if len(recordings) else {}
    per_day: dict[tuple[str, str, str], list[int]] = {}
    per_hour: dict[tuple[str, str, int], list[int]] = {}
    for r in detections.itertuples():
        st = starts.get(r.file)
        if st is None:
            continue
        t = st + timedelta(seconds=float(r.start_s))
        dev = devices.get(r.file) or "(unknown device)"
        per_day.setdefault((t.strftime("%Y-%m-%d"), dev, r.label), [0, 0])[0] += 1
        per_hour.setdefault((dev, r.label, t.hour), [0, 0])[0] += 1
    if len(segments):
        for lab in labels:
            pos = segments[segments[lab] >= thr.get(lab, 0.5)]
            for f, s0 in zip(pos["file"], pos["start_s"]):
                st = starts.get(f)
                if st is None:
                    continue
                t = st + timedelta(seconds=float(s0))
                dev = devices.get(f) or "(unknown device)"
                per_day.setdefault((t.strftime("%Y-%m-%d"), dev, lab), [0, 0])[1] += 1
                per_hour.setdefault((dev, lab, t.hour), [0, 0])[1] += 1
    days = sorted({d for d, _, _ in per_day})
    chart_rows = [[d] + [sum(v[0] for (dd, _, l), v in per_day.items() if dd == d and l == lab) for lab in labels]
                  for d in days]
    sheet = _Sheet(wb, "Presence", ["Day"] + [f"{lab} detections" for lab in labels], chart_rows)
    ws = sheet.ws
    if chart_rows:
        ch = BarChart()
        ch.type, ch.grouping = "col", "clustered"
        ch.title, ch.y_axis.title, ch.x_axis.title = "Detections per day", "detections", "day"
        data = Reference(ws, min_col=2, min_row=1, max_col=1 + len(labels), max_row=1 + len(chart_rows))
        cats = Reference(ws, min_col=1, min_row=2, max_row=1 + len(chart_rows))
        ch.add_data(data, titles_from_data=True)
        ch.set_categories(cats)
        ch.height, ch.width = 8, 18
        ws.add_chart(ch, f"{chr(ord('A') + len(labels) + 2)}2")
    _Sheet(wb, "Presence by day", ["Day", "Device", "Label", "Detections", "Positive segments"],
           [[d, dev, lab, v[0], v[1]] for (d, dev, lab), v in sorted(per_day.items())])
    _Sheet(wb, "Presence by hour", ["Device", "Label", "Hour of day", "Detections", "Positive segments"],
           [[dev, lab, h, v[0], v[1]] for (dev, lab, h), v in sorted(per_hour.items())])


def _devices(wb, recordings) -> None:
    rows = []
    if len(recordings):
        found = recordings[recordings["status"] != "skipped"].copy()
        found["device"] = found["device_id"].where(found["device_id"] != "", "(unknown device)")
        for dev, g in found.groupby("device", sort=True):
            times = [t for t in (_parse(x) for x in g["start_time"]) if t is not None]
            stops = sorted({s for s in g.get("stop_reason", []) if isinstance(s, str) and s})
            fw = sorted({s for s in g["firmware"] if isinstance(s, str) and s})
            rows.append([dev, int(len(g)), round(float(g["duration_s"].fillna(0).sum()) / 3600, 3),
                         _naive(min(times)) if times else None, _naive(max(times)) if times else None,
                         _num(g["temperature_c"].min()), _num(g["temperature_c"].max()), _num(g["battery_v"].min()),
                         ", ".join(fw) or None, "; ".join(stops) or None])
    _Sheet(wb, "Devices", ["Device ID", "Files", "Hours recorded", "First recording", "Last recording",
                           "Temperature min (°C)", "Temperature max (°C)", "Lowest battery (V)", "Firmware",
                           "Stop reasons"], rows,
           widths={"Stop reasons": 50, "Firmware": 20},
           formats={"First recording": "yyyy-mm-dd hh:mm", "Last recording": "yyyy-mm-dd hh:mm",
                    "Temperature min (°C)": "0.0", "Temperature max (°C)": "0.0", "Lowest battery (V)": "0.0"})


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        for i, x in enumerate(d):
            out += _flatten(x, f"{prefix}[{i}]")
    else:
        out.append((prefix, d if isinstance(d, (int, float, str)) or d is None else json.dumps(d, default=str)))
    return out
