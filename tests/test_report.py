"""The workbook people review, the CSVs and Raven tables: content, types, safety, atomic writes."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook

from monitor.report import write_reports
from monitor.report.safe import safe_text
from monitor.report.workbook import times_heard

LABELS = ["frog", "bird"]
EVIL = '=HYPERLINK("http://x","y").wav'


def tables():
    rec = pd.DataFrame([
        dict(file="A/20230405_190200.WAV", status="ok", reason="", recorder="AudioMoth", device_id="24E144055E080032",
             deployment_id="", firmware="1.10.1", start_time="2023-04-05T19:02:00-07:00", utc_offset="-07:00",
             temperature_c=-3.5, battery_v=4.1, gain="medium", sample_rate_hz=48000, channels=1, duration_s=60.0,
             segments=6, latitude=np.nan, longitude=np.nan, filter="", trigger="", stop_reason="low voltage",
             comment="@SUM(A1)", warnings=""),
        dict(file=EVIL, status="ok", reason="", recorder="", device_id="+1", deployment_id="", firmware="",
             start_time="", utc_offset="", temperature_c=np.nan, battery_v=np.nan, gain="", sample_rate_hz=16000,
             channels=1, duration_s=20.0, segments=2, latitude=np.nan, longitude=np.nan, filter="", trigger="",
             stop_reason="", comment="", warnings=""),
        dict(file="._x.wav", status="skipped", reason="macOS metadata file", recorder="", device_id="",
             deployment_id="", firmware="", start_time="", utc_offset="", temperature_c=np.nan, battery_v=np.nan,
             gain="", sample_rate_hz=pd.NA, channels=pd.NA, duration_s=np.nan, segments=0, latitude=np.nan,
             longitude=np.nan, filter="", trigger="", stop_reason="", comment="", warnings=""),
    ])
    seg_rows = []
    for i in range(6):
        seg_rows.append(dict(file="A/20230405_190200.WAV", segment=i, start_s=10.0 * i, end_s=10.0 * i + 10,
                             start_time=f"2023-04-05T19:02:{i * 10:02d}-07:00" if i < 6 else "",
                             frog=[0.1, 0.9, 0.8, 0.2, 0.1, 0.1][i], bird=0.05))
    for i in range(2):
        seg_rows.append(dict(file=EVIL, segment=i, start_s=10.0 * i, end_s=10.0 * i + 10, start_time="",
                             frog=0.1, bird=[0.7, 0.2][i]))
    seg = pd.DataFrame(seg_rows)
    det = pd.DataFrame([
        dict(file="A/20230405_190200.WAV", label="frog", start_s=10.0, end_s=30.0, start_time="2023-04-05T19:02:10-07:00",
             end_time="2023-04-05T19:02:30-07:00", score_max=0.9, score_mean=0.85, segments=2, device_id="24E144055E080032"),
        dict(file=EVIL, label="bird", start_s=0.0, end_s=10.0, start_time="", end_time="", score_max=0.7,
             score_mean=0.7, segments=1, device_id="+1"),
    ])
    info = {"model": {"name": "demo", "version": "1.0", "sha256": "ab" * 32, "path": ""}, "labels": LABELS,
            "thresholds": {"frog": 0.5, "bird": 0.5}, "task": "multilabel",
            "preprocessing": {"band": {"low_hz": 100.0, "high_hz": 3000.0}, "resample": {"sample_rate_hz": 16000}},
            "package_version": "0.1.0", "command": "monitor run X", "input_dir": "/card", "started": "2023-04-06T08:00:00+00:00",
            "ended": "2023-04-06T08:01:00+00:00", "counts": {"found": 3, "ok": 2, "skipped": 1, "failed": 0}}
    return rec, seg, det, info


@pytest.fixture
def out(tmp_path):
    rec, seg, det, info = tables()
    write_reports(tmp_path, recordings=rec, segments=seg, detections=det, run_info=info, input_dir=Path("/card"))
    return tmp_path


def test_sheets_headers_and_frozen_filtered(out):
    wb = load_workbook(out / "report.xlsx")
    assert wb.sheetnames[:6] == ["Summary", "Detections", "Presence", "Presence by day", "Presence by hour", "Devices"]
    assert "Skipped files" in wb.sheetnames and "Run info" in wb.sheetnames
    s = wb["Summary"]
    header = [c.value for c in s[1]]
    for col in ["Model Name : Version", "File Name", "Prediction", "Times Heard", "Device ID", "Timestamp",
                "Temperature", "Review Date", "Max Score", "Segments Positive", "Duration"]:
        assert col in header
    for name in ["Summary", "Detections", "Devices"]:
        assert wb[name].freeze_panes == "A2" and wb[name].auto_filter.ref.startswith("A1:")


def test_summary_times_heard_and_types(out):
    df = pd.read_excel(out / "report.xlsx", sheet_name="Summary")
    assert len(df) == 4  # 2 ok recordings x 2 labels; the skipped one is not summarised
    row = df[(df["File Name"] == "A/20230405_190200.WAV") & (df["Label"] == "frog")].iloc[0]
    assert row["Prediction"] == "Positive" and row["Times Heard"] == "19:02:10-19:02:30"
    assert row["Model Name : Version"] == "demo : 1.0" and row["Segments Positive"] == 2
    assert row["Timestamp"] == pd.Timestamp("2023-04-05 19:02:00") and row["Temperature"] == -3.5
    assert row["Max Score"] == pytest.approx(0.9) and row["Duration"] == "0:01:00"
    neg = df[(df["File Name"] == "A/20230405_190200.WAV") & (df["Label"] == "bird")].iloc[0]
    assert neg["Prediction"] == "Negative"
    evil = df[(df["File Name"] == EVIL) & (df["Label"] == "bird")].iloc[0]
    assert evil["Times Heard"] == "0:00:00-0:00:10"  # no start time: offsets


def test_detections_sheet_datetimes_link_validation(out):
    wb = load_workbook(out / "report.xlsx")
    ws = wb["Detections"]
    header = [c.value for c in ws[1]]
    assert header[-2:] == ["Verified", "Notes"]
    r = {h: c for h, c in zip(header, ws[2])}
    assert r["Start Time"].value == datetime(2023, 4, 5, 19, 2, 10) and r["Start Time"].is_date
    assert r["End Time"].value == datetime(2023, 4, 5, 19, 2, 30)
    assert r["UTC Offset"].value == "-07:00" and r["Temperature (°C)"].value == -3.5
    assert r["Link"].hyperlink.target == "file:///card/A/20230405_190200.WAV"
    assert r["Max Score"].number_format == "0.000"
    dv = ws.data_validations.dataValidation
    assert dv and dv[0].formula1 == '"yes,no,unsure"' and "N2" in str(dv[0].sqref)


def test_presence_chart_devices_skipped_runinfo(out):
    wb = load_workbook(out / "report.xlsx")
    assert len(wb["Presence"]._charts) == 1
    days = pd.read_excel(out / "report.xlsx", sheet_name="Presence by day")
    row = days[(days.Label == "frog")].iloc[0]
    assert (row.Day, row.Device, row.Detections, row["Positive segments"]) == ("2023-04-05", "24E144055E080032", 1, 2)
    hours = pd.read_excel(out / "report.xlsx", sheet_name="Presence by hour")
    assert hours[hours.Label == "frog"]["Hour of day"].tolist() == [19]
    dev = pd.read_excel(out / "report.xlsx", sheet_name="Devices")
    d = dev[dev["Device ID"] == "24E144055E080032"].iloc[0]
    assert d["Files"] == 1 and d["Hours recorded"] == pytest.approx(60 / 3600, abs=1e-3)
    assert d["Stop reasons"] == "low voltage" and d["Lowest battery (V)"] == 4.1
    sk = pd.read_excel(out / "report.xlsx", sheet_name="Skipped files")
    assert sk.iloc[0].tolist() == ["._x.wav", "skipped", "macOS metadata file"]
    ri = pd.read_excel(out / "report.xlsx", sheet_name="Run info")
    kv = dict(zip(ri.Key, ri.Value))
    assert kv["model.sha256"] == "ab" * 32 and kv["thresholds.frog"] == 0.5
    assert (out / "plots" / "detections_per_day.png").stat().st_size > 1000


def test_injection_never_becomes_a_formula(out):
    wb = load_workbook(out / "report.xlsx")
    for ws in wb.worksheets:
        for row in ws.iter_rows():
            for c in row:
                assert c.data_type != "f", (ws.title, c.coordinate, c.value)
    det = wb["Detections"]
    cells = {c.value: c.data_type for c in det[3]}
    assert cells[EVIL] == "s" and cells["+1"] == "s"  # shown verbatim, stored as text
    csv = (out / "detections.csv").read_text()
    assert "'=HYPERLINK" in csv and "\n=HYPERLINK" not in csv and ",'+1" in csv
    rec = pd.read_csv(out / "recordings.csv")
    assert rec.comment.iloc[0] == "'@SUM(A1)" and rec.temperature_c.iloc[0] == -3.5  # numbers untouched
    assert ",-3.5," in (out / "recordings.csv").read_text()
    assert safe_text(-3.5) == -3.5 and safe_text("-x") == "'-x" and safe_text("a=b") == "a=b"


def test_csv_columns_and_raven(out):
    assert pd.read_csv(out / "detections.csv").columns.tolist() == [
        "file", "label", "start_s", "end_s", "start_time", "end_time", "score_max", "score_mean", "segments", "device_id"]
    assert pd.read_csv(out / "segments.csv").columns.tolist() == ["file", "segment", "start_s", "end_s", "start_time",
                                                                  "frog", "bird"]
    assert pd.read_csv(out / "recordings.csv").columns.tolist()[:4] == ["file", "status", "reason", "recorder"]
    rv = (out / "raven" / "20230405_190200.selections.txt").read_text().splitlines()
    assert rv[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                                 "High Freq (Hz)", "Species", "Score", "Begin File", "File Offset (s)"]
    assert rv[1].split("\t") == ["1", "Spectrogram 1", "1", "10.000", "30.000", "100.0", "3000.0", "frog", "0.9000",
                                 "20230405_190200.WAV", "10.000"]
    assert len(list((out / "raven").iterdir())) == 2


def test_stale_raven_tables_removed_and_atomic_write(tmp_path, monkeypatch):
    rec, seg, det, info = tables()
    write_reports(tmp_path, recordings=rec, segments=seg, detections=det, run_info=info, input_dir=Path("/card"))
    before = (tmp_path / "report.xlsx").read_bytes()
    write_reports(tmp_path, recordings=rec, segments=seg, detections=det.iloc[:1], run_info=info,
                  input_dir=Path("/card"))
    assert [p.name for p in (tmp_path / "raven").iterdir()] == ["20230405_190200.selections.txt"]
    import openpyxl.workbook.workbook as wbmod

    def boom(self, filename):  # inject a crash in the middle of saving
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(wbmod.Workbook, "save", boom)
    with pytest.raises(OSError):
        write_reports(tmp_path, recordings=rec, segments=seg, detections=det, run_info=info, input_dir=Path("/card"))
    load_workbook(tmp_path / "report.xlsx")  # the previous report is intact
    assert not list(tmp_path.glob(".*.tmp"))
    assert before[:2] == b"PK"


def test_times_heard_format():
    assert times_heard([(10, 30), (3600, 3610)], None) == "0:00:10-0:00:30, 1:00:00-1:00:10"
    assert times_heard([(10, 30)], datetime(2023, 1, 1, 23, 59, 50)) == "00:00:00-00:00:20"
