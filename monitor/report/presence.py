"""Presence: detections and positive segments per label by survey night and by hour of day, per deployment.

``presence()`` computes the tables once (pandas, vectorised); ``write_presence_sheet`` lays them out
in the workbook with native Excel charts, and ``plots.write_plots`` draws the same numbers as PNGs.
Times are each deployment's local wall-clock time (``results`` has converted recorder clocks with the
deployments table). A survey night runs from noon to noon and is dated by its evening, so a frog
chorus from 21:00 to 03:00 is one night. Recordings without a known start time cannot be placed; how
many such detections there were is reported, not guessed. With many labels (an AudioSet screening),
only the labels that were detected are shown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Mapping

from monitor.detect import parse_iso
from monitor.report.sheet import Col, header_cells, start_sheet, title_cell, widths
from monitor.results import MANY_LABELS

log = logging.getLogger(__name__)

ALL = "All deployments"
UNKNOWN_DEVICE = "(unknown device)"
MEASURES = ("detections", "positive segments")
HOURS = [f"{h:02d}" for h in range(24)]
NOON = timedelta(hours=12)


@dataclass
class Presence:
    """``by_night`` / ``by_hour``: index (deployment, measure, label), columns nights ('YYYY-MM-DD', the
    evening's date) / '00'..'23'. Rows for ``ALL`` come first, then each deployment; ``unplaced`` counts
    detections in recordings whose start time is unknown; ``hidden`` labels that were never detected and
    are left out (many labels only); ``notes`` are warnings to show beside the tables."""

    labels: list[str]
    nights: list[str]
    deployments: list[str]
    by_night: Any
    by_hour: Any
    unplaced: int
    hidden: int = 0
    notes: list[str] = field(default_factory=list)


def night_of(t: datetime) -> str:
    """The survey night (noon to noon) a local time falls in, dated by its evening."""
    return (t - NOON).date().isoformat()


def _times(keys: Any, offsets_s: Any, starts: Mapping[tuple[str, str], datetime | None]) -> Any:
    """Local wall-clock Timestamps (NaT where the start is unknown) for ((deployment, file), offset) pairs."""
    import pandas as pd

    known = {k: pd.Timestamp(t.replace(tzinfo=None)) for k, t in starts.items() if t is not None}
    base = pd.to_datetime(pd.Series(list(keys), index=offsets_s.index, dtype=object).map(known), errors="coerce")
    return base + pd.to_timedelta(offsets_s.astype(float), unit="s")


def recording_starts(recordings: Any) -> dict[tuple[str, str], datetime | None]:
    """(deployment, file) -> the recording's local start (aware when its UTC offset is known), or None."""
    return {(d, f): parse_iso(t) for d, f, t in zip(recordings["deployment"], recordings["file"],
                                                    recordings["start_time"])}


def presence(results: Any) -> Presence:
    """Count detections (by start time) and positive segments (``results.positives``) per survey night and
    hour of day, for all deployments and per deployment, each in its own local time."""
    import pandas as pd

    recordings, segments, detections = results.recordings, results.segments, results.detections
    labels = list(results.labels)
    hidden = 0
    if len(labels) > MANY_LABELS:
        seen = set(detections["label"])
        hidden = sum(lab not in seen for lab in labels)
        labels = [lab for lab in labels if lab in seen]
    starts = recording_starts(recordings)
    ok = recordings[recordings["status"].isin(["ok", "missing"]) & (recordings["segments"] > 0)]

    parts = []
    if len(detections):
        det = detections[detections["label"].isin(labels)]
        t = _times(list(zip(det["deployment"], det["file"])), det["start_s"], starts)
        parts.append(pd.DataFrame({"deployment": det["deployment"], "measure": MEASURES[0], "label": det["label"],
                                   "time": t}))
    if len(segments):
        seg_t = _times(list(zip(segments["deployment"], segments["file"])), segments["start_s"], starts)
        for lab in labels:
            pos = results.positives[:, results.labels.index(lab)]
            parts.append(pd.DataFrame({"deployment": segments["deployment"][pos], "measure": MEASURES[1],
                                       "label": lab, "time": seg_t[pos]}))
    events = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        {"deployment": [], "measure": [], "label": [], "time": pd.to_datetime([])})
    unplaced = int(((events["measure"] == MEASURES[0]) & events["time"].isna()).sum())
    events = events[events["time"].notna()]
    events = events.assign(night=(events["time"] - NOON).dt.strftime("%Y-%m-%d"),
                           hour=events["time"].dt.strftime("%H"))

    nights = set(events["night"])
    for d, f, dur in zip(ok["deployment"], ok["file"], ok["duration_s"]):  # nights with recordings show zeros
        t0 = starts.get((d, f))
        if t0 is not None:
            n = (t0 - NOON).date()
            end = (t0 + timedelta(seconds=float(dur) if dur == dur else 0.0) - NOON).date()
            while n <= end:
                nights.add(n.isoformat())
                n += timedelta(days=1)
    nights_sorted = sorted(nights)
    deployments = sorted(set(ok["deployment"]) | set(events["deployment"]))

    index = pd.MultiIndex.from_tuples(
        [(ALL, m, lab) for m in MEASURES for lab in labels]
        + [(dep, m, lab) for dep in deployments for m in MEASURES for lab in labels],
        names=["deployment", "measure", "label"])

    def table(key: str, columns: list[str]) -> Any:
        per_dep = events.groupby(["deployment", "measure", "label", key]).size()
        total = events.groupby(["measure", "label", key]).size()
        total.index = pd.MultiIndex.from_tuples([(ALL, *k) for k in total.index],
                                                names=["deployment", "measure", "label", key])
        both = pd.concat([total, per_dep])
        wide = both.unstack(key) if len(both) else pd.DataFrame(index=index)
        return wide.reindex(index=index, columns=columns).fillna(0).astype(int)

    return Presence(labels, nights_sorted, deployments, table("night", nights_sorted), table("hour", HOURS),
                    unplaced, hidden, list(results.run.warnings))


def write_presence_sheet(wb: Any, p: Presence) -> Any:
    """The Presence sheet: labels x survey night and labels x hour of day per deployment, and two native charts."""
    from openpyxl.chart import BarChart, Reference
    from openpyxl.utils import get_column_letter

    ws = start_sheet(wb, "Presence")
    lead = [Col("Deployment"), Col("Count of"), Col("Label")]
    night_rows = [list(k) + list(map(int, v)) + [int(sum(v))]
                  for k, v in zip(p.by_night.index, p.by_night.to_numpy())]
    hour_rows = [list(k) + list(map(int, v)) + [int(sum(v))] for k, v in zip(p.by_hour.index, p.by_hour.to_numpy())]
    n_cols = 3 + max(len(p.nights), 24) + 1
    sample = [r[:3] for r in night_rows[:200]]
    lead_w = widths(lead, sample)
    for j in range(1, n_cols + 1):
        ws.column_dimensions[get_column_letter(j)].width = lead_w[j - 1] if j <= 3 else 11
    ws.freeze_panes = "D2"
    ws.row_dimensions[1].height = 30.0

    ws.append(header_cells(ws, ["Deployment", "Count of", "Label", *p.nights, "Total"]))
    for r in night_rows:
        ws.append(r)
    night_end = 1 + len(night_rows)
    ws.auto_filter.ref = f"A1:{get_column_letter(3 + len(p.nights) + 1)}{night_end}"
    row = night_end + 1
    ws.append([])
    ws.append([title_cell(ws, "By hour of day (each deployment's local time)")])
    ws.append(header_cells(ws, ["Deployment", "Count of", "Label", *HOURS, "Total"]))
    hour_head = row + 2
    for r in hour_rows:
        ws.append(r)
    row = hour_head + len(hour_rows) + 1
    notes = ["Columns of the first table are survey nights, noon to noon in each deployment's local time, dated "
             "by their evening (a chorus from 21:00 to 03:00 counts on one night).",
             "Detections are counted at their start time; positive segments are segments whose score "
             "reached the label's threshold."]
    if p.hidden:
        notes.append(f"{p.hidden} labels that were never detected are not listed.")
    if p.unplaced:
        notes.append(f"{p.unplaced} detection(s) in recordings with an unknown start time are not placed "
                     "on a night or hour here (see the Detections sheet).")
    notes += [f"Warning: {w}" for w in p.notes]
    ws.append([])
    for text in notes:
        ws.append([text])
    row += len(notes) + 1

    n_labels = len(p.labels)
    if n_labels and p.nights:
        ch = BarChart()
        ch.type, ch.grouping = "col", "clustered"
        ch.title, ch.y_axis.title = "Detections per survey night (all deployments)", "detections"
        data = Reference(ws, min_col=3, max_col=3 + len(p.nights), min_row=2, max_row=1 + n_labels)
        ch.add_data(data, from_rows=True, titles_from_data=True)
        ch.set_categories(Reference(ws, min_col=4, max_col=3 + len(p.nights), min_row=1, max_row=1))
        ch.height, ch.width = 7.5, 16
        ws.add_chart(ch, f"A{row}")
        hc = BarChart()
        hc.type, hc.grouping = "col", "clustered"
        hc.title, hc.y_axis.title = "Detections by hour of day (all deployments, local time)", "detections"
        data = Reference(ws, min_col=3, max_col=3 + 24, min_row=hour_head + 1, max_row=hour_head + n_labels)
        hc.add_data(data, from_rows=True, titles_from_data=True)
        hc.set_categories(Reference(ws, min_col=4, max_col=3 + 24, min_row=hour_head, max_row=hour_head))
        hc.height, hc.width = 7.5, 16
        ws.add_chart(hc, f"A{row + 16}")
    return ws
