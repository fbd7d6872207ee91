"""Presence: detections and positive segments per label by local day and by hour of day, per device.

``presence()`` computes the tables once (pandas, vectorised); ``write_presence_sheet`` lays them out
in the workbook with native Excel charts, and ``plots.write_plots`` draws the same numbers as PNGs.
Times are local wall-clock times at the recorder. Recordings without a known start time cannot be
placed on a day or an hour; how many such detections there were is reported, not guessed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Mapping

from monitor.report.sheet import Col, header_cells, start_sheet, title_cell, widths

log = logging.getLogger(__name__)

ALL_DEVICES = "All deployments"
UNKNOWN_DEVICE = "(unknown device)"
MEASURES = ("detections", "positive segments")
HOURS = [f"{h:02d}" for h in range(24)]


@dataclass
class Presence:
    """``by_day`` / ``by_hour``: index (device, measure, label), columns days ('YYYY-MM-DD') / '00'..'23'.

    Rows for ``ALL_DEVICES`` come first, then each device; ``unplaced`` counts detections in
    recordings whose start time is unknown.
    """

    labels: list[str]
    days: list[str]
    by_day: Any
    by_hour: Any
    unplaced: int


def _times(keys: Any, offsets_s: Any, starts: Mapping[tuple[str, str], datetime | None]) -> Any:
    """Local wall-clock Timestamps (NaT where the start is unknown) for ((deployment, file), offset) pairs."""
    import pandas as pd

    known = {k: pd.Timestamp(t.replace(tzinfo=None)) for k, t in starts.items() if t is not None}
    base = pd.to_datetime(pd.Series(list(keys), index=offsets_s.index, dtype=object).map(known), errors="coerce")
    return base + pd.to_timedelta(offsets_s.astype(float), unit="s")


def recording_starts(recordings: Any) -> dict[tuple[str, str], datetime | None]:
    """(deployment, file) -> the recording's start (aware when its UTC offset is known), or None."""
    from monitor.detect import parse_iso

    return {(d, f): parse_iso(t) for d, f, t in zip(recordings["deployment"], recordings["file"],
                                                    recordings["start_time"])}


def presence(results: Any) -> Presence:
    """Count detections (by start time) and positive segments (``results.positives``) per day and hour,
    for all deployments and per deployment."""
    import pandas as pd

    labels = list(results.labels)
    recordings, segments, detections = results.recordings, results.segments, results.detections
    starts = recording_starts(recordings)
    ok = recordings[recordings["status"].isin(["ok", "missing"]) & (recordings["segments"] > 0)]
    devices = sorted(set(ok["deployment"]))

    parts = []
    if len(detections):
        keys = list(zip(detections["deployment"], detections["file"]))
        t = _times(keys, detections["start_s"], starts)
        parts.append(pd.DataFrame({"device": detections["deployment"], "measure": MEASURES[0],
                                   "label": detections["label"], "time": t}))
    if len(segments):
        seg_t = _times(list(zip(segments["deployment"], segments["file"])), segments["start_s"], starts)
        for j, lab in enumerate(labels):
            pos = results.positives[:, j]
            parts.append(pd.DataFrame({"device": segments["deployment"][pos], "measure": MEASURES[1], "label": lab,
                                       "time": seg_t[pos]}))
    events = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"device": [], "measure": [], "label": [], "time": pd.to_datetime([])})
    unplaced = int(((events["measure"] == MEASURES[0]) & events["time"].isna()).sum())
    events = events[events["time"].notna()]
    events = events.assign(day=events["time"].dt.strftime("%Y-%m-%d"), hour=events["time"].dt.strftime("%H"))

    days = set(events["day"])
    for d, f, dur in zip(ok["deployment"], ok["file"], ok["duration_s"]):  # days with recordings show zeros
        t0 = starts.get((d, f))
        if t0 is not None:
            day, end = t0.date(), (t0 + timedelta(seconds=float(dur) if dur == dur else 0.0)).date()
            while day <= end:
                days.add(day.isoformat())
                day += timedelta(days=1)
    days_sorted = sorted(days)
    devices = sorted(set(devices) | set(events["device"]))

    index = pd.MultiIndex.from_tuples(
        [(ALL_DEVICES, m, lab) for m in MEASURES for lab in labels]
        + [(dev, m, lab) for dev in devices for m in MEASURES for lab in labels],
        names=["device", "measure", "label"])

    def table(key: str, columns: list[str]) -> Any:
        per_dev = events.groupby(["device", "measure", "label", key]).size()
        total = events.groupby(["measure", "label", key]).size()
        total.index = pd.MultiIndex.from_tuples([(ALL_DEVICES, *k) for k in total.index],
                                                names=["device", "measure", "label", key])
        both = pd.concat([total, per_dev])
        wide = both.unstack(key) if len(both) else pd.DataFrame(index=index)
        return wide.reindex(index=index, columns=columns).fillna(0).astype(int)

    return Presence(labels, days_sorted, table("day", days_sorted), table("hour", HOURS), unplaced)


def write_presence_sheet(wb: Any, p: Presence) -> Any:
    """The Presence sheet: labels x day and labels x hour of day per device, and two native charts."""
    from openpyxl.chart import BarChart, Reference
    from openpyxl.utils import get_column_letter

    ws = start_sheet(wb, "Presence")
    lead = [Col("Deployment"), Col("Count of"), Col("Label")]
    day_rows = [list(k) + list(map(int, v)) + [int(sum(v))] for k, v in zip(p.by_day.index, p.by_day.to_numpy())]
    hour_rows = [list(k) + list(map(int, v)) + [int(sum(v))] for k, v in zip(p.by_hour.index, p.by_hour.to_numpy())]
    n_cols = 3 + max(len(p.days), 24) + 1
    sample = [r[:3] for r in day_rows[:200]]
    lead_w = widths(lead, sample)
    for j in range(1, n_cols + 1):
        ws.column_dimensions[get_column_letter(j)].width = lead_w[j - 1] if j <= 3 else 11
    ws.freeze_panes = "D2"
    ws.row_dimensions[1].height = 30.0

    ws.append(header_cells(ws, ["Deployment", "Count of", "Label", *p.days, "Total"]))
    for r in day_rows:
        ws.append(r)
    day_end = 1 + len(day_rows)
    ws.auto_filter.ref = f"A1:{get_column_letter(3 + len(p.days) + 1)}{day_end}"
    row = day_end + 1
    ws.append([])
    ws.append([title_cell(ws, "By hour of day (local time at the recorder)")])
    ws.append(header_cells(ws, ["Deployment", "Count of", "Label", *HOURS, "Total"]))
    hour_head = row + 2
    for r in hour_rows:
        ws.append(r)
    row = hour_head + len(hour_rows) + 1
    notes = ["Detections are counted at their start time; positive segments are segments whose score "
             "reached the label's threshold."]
    if p.unplaced:
        notes.append(f"{p.unplaced} detection(s) in recordings with an unknown start time are not placed "
                     "on a day or hour here (see the Detections sheet).")
    ws.append([])
    for text in notes:
        ws.append([text])
    row += len(notes) + 1

    n_labels = len(p.labels)
    if n_labels and p.days:
        ch = BarChart()
        ch.type, ch.grouping = "col", "clustered"
        ch.title, ch.y_axis.title = "Detections per day (all deployments)", "detections"
        data = Reference(ws, min_col=3, max_col=3 + len(p.days), min_row=2, max_row=1 + n_labels)
        ch.add_data(data, from_rows=True, titles_from_data=True)
        ch.set_categories(Reference(ws, min_col=4, max_col=3 + len(p.days), min_row=1, max_row=1))
        ch.height, ch.width = 7.5, 16
        ws.add_chart(ch, f"A{row}")
        hc = BarChart()
        hc.type, hc.grouping = "col", "clustered"
        hc.title, hc.y_axis.title = "Detections by hour of day (all deployments)", "detections"
        data = Reference(ws, min_col=3, max_col=3 + 24, min_row=hour_head + 1, max_row=hour_head + n_labels)
        hc.add_data(data, from_rows=True, titles_from_data=True)
        hc.set_categories(Reference(ws, min_col=4, max_col=3 + 24, min_row=hour_head, max_row=hour_head))
        hc.height, hc.width = 7.5, 16
        ws.add_chart(hc, f"A{row + 16}")
    return ws
