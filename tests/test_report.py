"""The workbook people review, the CSVs and Raven tables: content, types, safety, atomic writes.

Small DataFrames built by hand, turned into a ``results.Results`` the way ``results.load_results``
does; the workbook is read back with openpyxl and pandas.
"""

from __future__ import annotations

import gc
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook

from monitor.report import raven_band_hz, write_reports
from monitor.report.raven import write_raven
from monitor.report.safe import is_formula_like, safe_text, unquote
from monitor.report.tables import DETECTIONS, RECORDING_EXTRAS, RECORDINGS, read_csv
from monitor.report.workbook import DETECTION_COLUMNS, SUMMARY_COLUMNS, flatten, times_heard
from monitor.results import RunInfo, build_results, recordings_frame, reviews_frame

LABELS = ["frog", "bird"]
EVIL = '=HYPERLINK("http://x","y").wav'
KNOWN = "A/20230405_190200.WAV"
SHEETS = ["Summary", "Detections", "Presence", "Devices", "Skipped files", "Run info"]


def rec_row(**kw):
    row = dict(deployment="24E144055E080032", file="", status="ok", reason="", recorder="", device_id="", deployment_id="", firmware="",
               start_time="", utc_offset="", temperature_c=np.nan, battery_v=np.nan, gain="", sample_rate_hz=16000,
               channels=1, duration_s=np.nan, segments=0, latitude=np.nan, longitude=np.nan, filter="", trigger="",
               stop_reason="", comment="", warnings="")
    row.update(kw)
    return row


def tables():
    rec = pd.DataFrame([
        rec_row(file=KNOWN, recorder="AudioMoth", device_id="24E144055E080032", firmware="1.10.1",
                start_time="2023-04-05T19:02:00-07:00", utc_offset="-07:00", temperature_c=-3.5, battery_v=4.1,
                gain="medium", sample_rate_hz=48000, duration_s=60.0, segments=6, stop_reason="low voltage",
                comment="@SUM(A1)"),
        rec_row(file="B/20230406_050000.WAV", recorder="AudioMoth", device_id="24E144055E080032",
                firmware="1.10.1", start_time="2023-04-06T05:00:00-07:00", utc_offset="-07:00", temperature_c=2.0,
                battery_v=3.9, duration_s=20.0, segments=2),
        rec_row(deployment="+1", file=EVIL, device_id="+1", duration_s=20.0, segments=2),
        rec_row(deployment="card", file="._x.wav", status="skipped", reason="macOS metadata file",
                sample_rate_hz=pd.NA, channels=pd.NA),
        rec_row(deployment="card", file="broken.wav", status="failed", reason="could not be read: truncated header"),
    ])
    rec["input_dir"] = "/card"
    rec = recordings_frame(rec.to_dict("records"))
    seg_rows = []
    for i, frog in enumerate([0.1, 0.9, 0.8, 0.2, 0.1, 0.1]):
        seg_rows.append(dict(deployment="24E144055E080032", file=KNOWN, segment=i, start_s=10.0 * i, end_s=10.0 * i + 10,
                             start_time=f"2023-04-05T19:02:{i * 10:02d}-07:00", frog=frog, bird=0.05))
    for i, frog in enumerate([0.95, 0.3]):
        seg_rows.append(dict(deployment="24E144055E080032", file="B/20230406_050000.WAV", segment=i, start_s=10.0 * i, end_s=10.0 * i + 10,
                             start_time=f"2023-04-06T05:00:{i * 10:02d}-07:00", frog=frog, bird=0.2))
    for i, bird in enumerate([0.7, 0.2]):
        seg_rows.append(dict(deployment="+1", file=EVIL, segment=i, start_s=10.0 * i, end_s=10.0 * i + 10, start_time="",
                             frog=0.1, bird=bird))
    seg = pd.DataFrame(seg_rows)
    det = pd.DataFrame([
        dict(deployment="24E144055E080032", file=KNOWN, label="frog", start_s=10.0, end_s=30.0, start_time="2023-04-05T19:02:10-07:00",
             end_time="2023-04-05T19:02:30-07:00", score_max=0.9, score_mean=0.85, segments=2,
             device_id="24E144055E080032"),
        dict(deployment="24E144055E080032", file="B/20230406_050000.WAV", label="frog", start_s=0.0, end_s=10.0,
             start_time="2023-04-06T05:00:00-07:00", end_time="2023-04-06T05:00:10-07:00", score_max=0.95,
             score_mean=0.95, segments=1, device_id="24E144055E080032"),
        dict(deployment="+1", file=EVIL, label="bird", start_s=0.0, end_s=10.0, start_time="", end_time="", score_max=0.7,
             score_mean=0.7, segments=1, device_id="+1"),
    ])
    info = {"model": {"name": "demo", "version": "1.0", "sha256": "ab" * 32, "path": "/m"},
            "models": [{"name": "demo", "version": "1.0", "sha256": "ab" * 32, "path": "/m"}], "labels": LABELS,
            "thresholds": {"frog": 0.5, "bird": 0.5}, "task": "multilabel",
            "preprocessing": {"segment": {"window_s": 10.0}, "band": {"low_hz": 100.0, "high_hz": 3000.0, "order": 6},
                              "resample": {"sample_rate_hz": 16000}},
            "package_version": "0.1.0", "command": "monitor run /card --out /o", "input_dir": "/card",
            "out_dir": "/o", "started": "2023-04-06T08:00:00+00:00", "ended": "2023-04-06T08:01:00+00:00",
            "counts": {"found": 5, "ok": 3, "skipped": 1, "failed": 1, "segments": 10, "detections": 3},
            "device": "cpu", "precision": "fp32"}
    return rec, seg, det, info


def results_of(recordings, segments, run_info, detections=None, reviews=None):
    """A Results as load_results builds it; ``detections`` replaces the computed events when given."""
    run = RunInfo.from_json(run_info)
    res = build_results(recordings, segments, run.labels, run.thresholds, run, reviews)
    res.run = RunInfo.from_json(run_info)
    if detections is not None:
        det = detections.copy()
        for c in ("verified", "notes"):
            if c not in det:
                det[c] = ""
        res.detections = det.reset_index(drop=True)
    return res


def write(out: Path, **override):
    rec, seg, det, info = tables()
    args = dict(recordings=rec, segments=seg, run_info=info, detections=None)
    args.update(override)
    return write_reports(out, results_of(**args))


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    write(d)
    return d


@pytest.fixture(scope="module")
def wb(out):
    return load_workbook(out / "report.xlsx")


def test_sheets_headers_frozen_filtered_printable(wb):
    assert wb.sheetnames == SHEETS
    assert [c.value for c in wb["Summary"][1]] == SUMMARY_COLUMNS
    assert [c.value for c in wb["Detections"][1]] == DETECTION_COLUMNS
    # the original fork's columns, in its order, with the deployment and the label added
    assert [c for c in SUMMARY_COLUMNS if c not in ("Deployment", "Label", "UTC Offset")][:8] == [
        "Model Name : Version", "File Name", "Prediction", "Times Heard", "Device ID", "Timestamp", "Temperature",
        "Review Date"]
    assert SUMMARY_COLUMNS[-3:] == ["Max Score", "Segments Positive", "Duration"]
    for name in SHEETS:
        ws = wb[name]
        assert ws.freeze_panes is not None and ws.freeze_panes.endswith("2"), name
        assert ws.sheet_properties.pageSetUpPr.fitToPage and ws.page_setup.fitToWidth == 1, name
        assert wb[name]["A1"].font.b, name  # styled header
    for name in ["Summary", "Detections", "Devices", "Skipped files"]:
        ws = wb[name]
        assert ws.auto_filter.ref == f"A1:{ws.cell(1, ws.max_column).column_letter}{ws.max_row}", name
    assert wb["Summary"].column_dimensions["F"].width == 44  # Times Heard
    assert 10 < wb["Summary"].column_dimensions["C"].width <= 60  # measured from the file names


def test_summary_rows_times_heard_and_types(out, wb):
    df = pd.read_excel(out / "report.xlsx", sheet_name="Summary")
    assert len(df) == 6  # 3 ok recordings x 2 labels; skipped and failed files are not summarised
    assert set(df["File Name"]) == {KNOWN, "B/20230406_050000.WAV", EVIL}
    row = df[(df["File Name"] == KNOWN) & (df["Label"] == "frog")].iloc[0]
    assert row["Prediction"] == "Positive" and row["Times Heard"] == "19:02:10-19:02:30"
    assert row["Model Name : Version"] == "demo : 1.0" and row["Segments Positive"] == 2
    assert row["Deployment"] == "24E144055E080032"
    assert row["Timestamp"] == pd.Timestamp("2023-04-05 19:02:00") and row["Temperature"] == -3.5
    assert pd.isna(row["Review Date"])  # empty until a reviewer fills it
    assert row["UTC Offset"] == "-07:00"
    assert row["Max Score"] == pytest.approx(0.9) and row["Duration"] == pd.Timedelta(seconds=60)
    neg = df[(df["File Name"] == KNOWN) & (df["Label"] == "bird")].iloc[0]
    assert neg["Prediction"] == "Negative" and pd.isna(neg["Times Heard"]) and neg["Segments Positive"] == 0
    evil = df[(df["File Name"] == EVIL) & (df["Label"] == "bird")].iloc[0]
    # no start time: offsets that cannot be read as a clock time (not "0:00:00-0:00:10", midnight)
    assert evil["Times Heard"] == "offsets into the file: +0:00:00 to +0:00:10"
    assert pd.isna(evil["Timestamp"]) and pd.isna(evil["Temperature"]) and pd.isna(evil["UTC Offset"])
    ws = wb["Summary"]
    assert isinstance(ws["H2"].value, datetime) and ws["H2"].number_format == "yyyy-mm-dd hh:mm:ss"
    assert ws["J2"].number_format == "0.0" and ws["L2"].number_format == "0.000" and ws["I2"].value == "-07:00"
    assert ws["N2"].value == timedelta(seconds=60)


def test_detections_sheet_datetimes_link_validation(out, wb):
    ws = wb["Detections"]  # sorted by deployment ("+1" first), file, label, start
    r = {h: c for h, c in zip(DETECTION_COLUMNS, ws[3])}
    assert r["File"].value == KNOWN and r["Label"].value == "frog" and r["Deployment"].value == "24E144055E080032"
    assert r["Start (s)"].value == 10 and r["End (s)"].value == 30
    assert r["Start Time"].value == datetime(2023, 4, 5, 19, 2, 10) and r["Start Time"].is_date
    assert r["End Time"].value == datetime(2023, 4, 5, 19, 2, 30) and r["End Time"].is_date
    assert r["UTC Offset"].value == "-07:00" and r["Temperature (°C)"].value == -3.5
    # the link follows the card folder cell in Run info: one cell to change when the card is mounted elsewhere
    assert r["Link"].value == """=HYPERLINK('Run info'!$B$3&"/A/20230405_190200.WAV","20230405_190200.WAV")"""
    assert wb["Run info"]["A3"].value.startswith("card folder") and wb["Run info"]["B3"].value == "/card"
    assert r["Max Score"].number_format == "0.000" and r["Mean Score"].value == pytest.approx(0.85)
    assert r["Verified"].value is None and r["Notes"].value is None
    unknown = {h: c.value for h, c in zip(DETECTION_COLUMNS, ws[2])}
    assert unknown["File"] == EVIL and unknown["Start Time"] is None and unknown["UTC Offset"] is None
    (dv,) = ws.data_validations.dataValidation
    assert dv.type == "list" and dv.formula1 == '"yes,no,unsure"' and str(dv.sqref) == "O2:O4"
    df = pd.read_excel(out / "report.xlsx", sheet_name="Detections")
    assert df["Start Time"].dtype.kind == "M" and len(df) == 3
    assert df["Start Time"].iloc[2] == pd.Timestamp("2023-04-06 05:00:00")


def test_presence_counts_and_native_charts(out, wb):
    ws = wb["Presence"]
    charts = ws._charts
    assert len(charts) == 2 and all(c.tagname == "barChart" for c in charts)
    rows = [[c.value for c in r] for r in ws.iter_rows()]
    # survey nights, noon to noon: 19:02 on the 5th and 05:00 on the 6th are the same night (of the 5th)
    assert rows[0][:5] == ["Deployment", "Count of", "Label", "2023-04-05", "Total"]
    hour_head = next(i for i, r in enumerate(rows) if r[:4] == ["Deployment", "Count of", "Label", "00"])
    by_key = {tuple(r[:3]): r[3:5] for r in rows[1:hour_head] if r[0] and r[1]}
    assert by_key[("All deployments", "detections", "frog")] == [2, 2]
    assert by_key[("All deployments", "positive segments", "frog")] == [3, 3]
    assert by_key[("24E144055E080032", "detections", "frog")] == [2, 2]
    assert by_key[("+1", "detections", "bird")] == [0, 0]  # unknown start time: not on a night
    hour = {tuple(r[:3]): r[3:27] for r in rows[hour_head + 1:] if r[1] in ("detections", "positive segments")}
    frog = hour[("All deployments", "detections", "frog")]
    assert frog[19] == 1 and frog[5] == 1 and sum(frog) == 2
    assert any("1 detection(s) in recordings with an unknown start time" in str(r[0]) for r in rows)
    assert (out / "plots" / "detections_per_night.png").stat().st_size > 1000
    assert (out / "plots" / "detections_by_hour.png").stat().st_size > 1000


def test_devices_skipped_runinfo(out):
    dev = pd.read_excel(out / "report.xlsx", sheet_name="Devices")
    assert dev["Device ID"].tolist() == ["(unknown device)", "+1", "24E144055E080032"]
    assert dev.set_index("Device ID").loc["24E144055E080032", "Deployments"] == "24E144055E080032"
    d = dev.set_index("Device ID").loc["24E144055E080032"]
    assert d["UTC Offsets"] == "-07:00"
    assert d["Files"] == 2 and d["Failed"] == 0 and d["Hours Recorded"] == pytest.approx(80 / 3600, abs=1e-3)
    assert d["First Recording"] == pd.Timestamp("2023-04-05 19:02:00")
    assert d["Last Recording Ends"] == pd.Timestamp("2023-04-06 05:00:20")
    assert (d["Temperature Min (°C)"], d["Temperature Max (°C)"], d["Lowest Battery (V)"]) == (-3.5, 2.0, 3.9)
    assert d["Stop Reasons"] == "low voltage (1 file)" and d["Firmware"] == "1.10.1" and d["Detections"] == 2
    assert dev.set_index("Device ID").loc["(unknown device)", "Failed"] == 1  # broken.wav
    sk = pd.read_excel(out / "report.xlsx", sheet_name="Skipped files")
    assert sk.values.tolist() == [["card", "._x.wav", "skipped", "macOS metadata file"],
                                  ["card", "broken.wav", "failed", "could not be read: truncated header"]]
    ri = pd.read_excel(out / "report.xlsx", sheet_name="Run info")
    kv = dict(zip(ri.Key, ri.Value))
    assert kv["model.sha256"] == "ab" * 32 and kv["thresholds.frog"] == 0.5 and kv["labels"] == "frog, bird"
    assert kv["preprocessing.band.low_hz"] == 100 and kv["counts.failed"] == 1
    assert kv["command"] == "monitor run /card --out /o" and kv["models[0].name"] == "demo"
    assert ri.Key.iloc[0] == "status" and ri.Value.iloc[0] == "complete"


def test_injection_never_becomes_a_formula(out, wb):
    for ws in wb.worksheets:
        head = [c.value for c in ws[1]]
        for row in ws.iter_rows():
            for c in row:
                if c.data_type == "f":  # only monitor's own link formulas, the card's text only in string literals
                    assert head[c.column - 1] == "Link" and c.value.startswith("=HYPERLINK('Run info'!$B$"), (
                        ws.title, c.coordinate, c.value)
    det = wb["Detections"]
    evil, plus = det["B2"], det["L2"]
    assert (evil.value, evil.data_type, evil.quotePrefix) == (EVIL, "s", True)  # shown verbatim, stays text
    assert (plus.value, plus.data_type, plus.quotePrefix) == ("+1", "s", True)
    assert (det["A2"].value, det["A2"].quotePrefix) == ("+1", True)  # the deployment column too
    assert det["H3"].value == "-07:00" and not det["H3"].quotePrefix  # a UTC offset is not a formula
    assert det["M3"].value == -3.5 and det["M3"].data_type == "n"  # numbers stay numbers
    text = (out / "detections.csv").read_text()
    assert "'=HYPERLINK" in text and "\n=HYPERLINK" not in text and "\"=HYPERLINK" not in text
    assert text.splitlines()[1].startswith("'+1,\"'=HYPERLINK") and text.splitlines()[1].endswith(",'+1,,")
    raw = pd.read_csv(out / "recordings.csv")
    assert raw.comment.iloc[0] == "'@SUM(A1)" and raw.temperature_c.iloc[0] == -3.5
    assert raw.utc_offset.iloc[0] == "-07:00"
    back = read_csv(out / "recordings.csv")
    assert back.file.tolist()[2] == EVIL and back.comment.iloc[0] == "@SUM(A1)" and back.device_id.iloc[2] == "+1"
    assert back.deployment.tolist()[2] == "+1"


def test_safe_rules():
    assert safe_text(-3.5) == -3.5 and safe_text("-x") == "'-x" and safe_text("a=b") == "a=b"
    for s in ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]:
        assert is_formula_like(s) and unquote(safe_text(s)) == s
    for s in ["-07:00", "+05:30", "frog", "", "'quoted"]:
        assert not is_formula_like(s) and safe_text(s) == s and unquote(s) == s


def test_csv_columns_exactly_as_interface(out):
    rec = pd.read_csv(out / "recordings.csv")
    assert rec.columns.tolist() == RECORDINGS + RECORDING_EXTRAS
    assert RECORDINGS == ["deployment", "file", "status", "reason", "recorder", "device_id", "deployment_id",
                          "firmware", "start_time", "utc_offset", "temperature_c", "battery_v", "gain",
                          "sample_rate_hz", "channels", "duration_s", "segments"]
    assert pd.read_csv(out / "detections.csv").columns.tolist() == DETECTIONS == [
        "deployment", "file", "label", "start_s", "end_s", "start_time", "end_time", "score_max", "score_mean",
        "segments", "device_id", "verified", "notes"]
    seg = pd.read_csv(out / "segments.csv")
    assert seg.columns.tolist() == ["deployment", "file", "segment", "start_s", "end_s", "start_time", "frog", "bird"]
    lines = (out / "recordings.csv").read_text().splitlines()
    assert lines[4].startswith("card,._x.wav,skipped,macOS metadata file,") and ",,," in lines[4]  # unknown = empty
    assert "48000" in lines[1] and "48000.0" not in lines[1]  # integer columns stay integers


def test_csv_float_precision(tmp_path):
    rec, seg, det, info = tables()
    seg.loc[0, "frog"] = 0.123456789
    seg.loc[1, ["start_s", "end_s"]] = [1234567.8912345, 1234577.8912345]
    write(tmp_path, segments=seg)
    assert "0.123457" in (tmp_path / "segments.csv").read_text()
    assert ",1234567.891," in (tmp_path / "detections.csv").read_text()  # long recordings keep their ms


def test_raven_tables(out):
    folder = out / "raven"
    # named by deployment and path on the card, so a table says whose recording it is
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["24E144055E080032__A__20230405_190200.selections.txt", "24E144055E080032__B__20230406_050000.selections.txt",
         "_1___HYPERLINK_http___x_y_.selections.txt"])
    rv = (folder / "24E144055E080032__A__20230405_190200.selections.txt").read_text().splitlines()
    assert rv[0].split("\t") == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
                                 "High Freq (Hz)", "Species", "Score", "Begin File", "File Offset (s)"]
    assert rv[1].split("\t") == ["1", "Spectrogram 1", "1", "10.000", "30.000", "100.0", "3000.0", "frog", "0.9000",
                                 "20230405_190200.WAV", "10.000"]
    assert len(rv) == 2


def test_raven_band_defaults_and_shared_stems(tmp_path):
    assert raven_band_hz({"band": {"low_hz": None, "high_hz": None}}) == (0.0, 8000.0)
    assert raven_band_hz({"band": {"low_hz": 500, "high_hz": 12000}, "resample": {"sample_rate_hz": 16000}}) == (
        500.0, 8000.0)
    det = pd.DataFrame([dict(deployment=d, file=f, label="frog", start_s=s, end_s=s + 10, score_max=0.8)
                        for d, f in [("AM1", "REC.WAV"), ("AM2", "REC.WAV"), ("AM2", "d/REC.WAV"),
                                     ("AM2", "d/rec.wav"), ("AM2", "other.wav")] for s in (20.0, 0.0)])
    names = sorted(p.name for p in write_raven(tmp_path, det, 0.0, 8000.0))
    again = sorted(p.name for p in write_raven(tmp_path, det, 0.0, 8000.0))
    # same names on every rebuild; two recorders' identical names stay apart and say whose they are;
    # names differing only in case keep their extension
    assert names == again == sorted(["AM1__REC.selections.txt", "AM2__REC.selections.txt", "AM2__d__REC.selections.txt",
                                     "AM2__d__rec.wav.selections.txt", "AM2__other.selections.txt"])
    lines = (tmp_path / "raven" / "AM2__other.selections.txt").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines[1:]] == ["1", "2"]
    assert [ln.split("\t")[3] for ln in lines[1:]] == ["0.000", "20.000"]  # in time order


def test_stale_raven_tables_removed(tmp_path):
    rec, seg, det, info = tables()
    write(tmp_path)
    write(tmp_path, detections=det.iloc[:1])
    assert [p.name for p in (tmp_path / "raven").iterdir()] == ["24E144055E080032__A__20230405_190200.selections.txt"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the crashed save's leftovers
def test_atomic_write_keeps_previous_report(tmp_path, monkeypatch):
    write(tmp_path)
    before = {n: (tmp_path / n).read_bytes() for n in ["report.xlsx"]}
    import openpyxl.workbook.workbook as wbmod

    def crash(self, filename):  # a crash in the middle of saving: half a file, then an error
        Path(filename).write_bytes(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(wbmod.Workbook, "save", crash)
    rec, seg, det, info = tables()
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path, detections=det.iloc[:1])
    assert (tmp_path / "report.xlsx").read_bytes() == before["report.xlsx"]
    load_workbook(tmp_path / "report.xlsx")  # the previous report still opens
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()

    def crash_csv(self, path, *a, **k):
        Path(path).write_text("file,lab")
        raise OSError("disk full")

    csv_before = (tmp_path / "recordings.csv").read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_csv)
    with pytest.raises(OSError):
        write(tmp_path)
    assert (tmp_path / "recordings.csv").read_bytes() == csv_before
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    gc.collect()  # finalise the abandoned write-only sheets here, not in a later test


def test_nothing_found_and_hostile_text(tmp_path):
    """No ok recordings at all, and text with control characters, still give a valid workbook."""
    rec = recordings_frame([rec_row(file="a\x01b.wav", status="failed", reason="bad\x00header", comment="x\x07")])
    seg = pd.DataFrame(columns=["deployment", "file", "segment", "start_s", "end_s", "start_time", *LABELS])
    write(tmp_path, recordings=rec, segments=seg)
    wb = load_workbook(tmp_path / "report.xlsx")
    assert wb.sheetnames == SHEETS and wb["Summary"].max_row == 1 and not wb["Presence"]._charts
    assert wb["Skipped files"]["B2"].value == "ab.wav" and wb["Skipped files"]["D2"].value == "badheader"
    assert not list((tmp_path / "raven").iterdir())


def test_times_heard_and_helpers():
    assert times_heard([(10, 30), (3600, 3610)], None) == "offsets into the file: +0:00:10 to +0:00:30, +1:00:00 to +1:00:10"
    assert times_heard([], None) == ""
    assert times_heard([(10, 30)], datetime(2023, 1, 1, 23, 59, 50)) == "00:00:00-00:00:20"
    many = times_heard([(10.0 * i, 10.0 * i + 10) for i in range(5000)], None)
    assert len(many) < 32767 and many.endswith("more in the Detections sheet)")
    assert RunInfo.from_json({"model": {"name": "a", "version": "1"}}).model_name() == "a : 1"
    assert RunInfo.from_json({"models": [{"name": "a", "version": "1"}, {"name": "b", "version": "2"}]}
                             ).model_name() == "a : 1 + b : 2"
    assert flatten({"a": {"b": [1, 2]}, "c": None, "d": [{"e": 1}]}) == [("a.b", "1, 2"), ("c", ""), ("d[0].e", 1)]


def _cells(ws):
    """Every cell's value and look, plus row heights, for comparing two workbooks."""
    out = {}
    for row in ws.iter_rows():
        for c in row:
            if c.value is None and not c.has_style:
                continue
            out[c.coordinate] = (c.value, c.data_type, c.number_format, c.quotePrefix, c.font.b, c.font.u,
                                 c.font.color.rgb if c.font.color is not None else None, c.alignment.wrap_text,
                                 c.alignment.indent, c.alignment.horizontal, c.alignment.vertical,
                                 c.hyperlink.target if c.hyperlink is not None else None)
    heights = {r: d.height for r, d in ws.row_dimensions.items() if d.height}
    return out, heights


def test_spliced_rows_equal_openpyxl_cells(tmp_path):
    """The fast path (first row by openpyxl, the rest spliced in as XML) reads back cell for cell, look for
    look and link for link exactly as a workbook written wholly by openpyxl; links become ranges."""
    import zipfile

    from monitor.report.workbook import write_workbook

    rec, seg, det, info = tables()
    rng = np.random.default_rng(3)
    odd = " B/odd & <name>.WAV"  # XML escapes and leading space
    extra = [dict(deployment="+1" if f == EVIL else "24E144055E080032", file=f, label=lab, start_s=10.0 * i,
                  end_s=10.0 * i + 10.0,
                  start_time=f"2023-04-05T19:{i // 6:02d}:{i % 6 * 10:02d}-07:00" if f == KNOWN else "",
                  end_time="", score_max=float(rng.random()), score_mean=np.nan if i == 3 else float(rng.random()),
                  segments=int(i % 3 + 1), device_id="-dev" if i == 5 else "24E144055E080032",
                  verified=("yes", "", "no", "=evil()")[i % 4], notes="" if i % 3 else f"note {i} & <b>")
             for f in (KNOWN, odd, EVIL) for lab in LABELS for i in range(0, 40, 2)]
    det = pd.concat([det, pd.DataFrame(extra)], ignore_index=True).fillna({"verified": "", "notes": ""}).sort_values(
        ["deployment", "file", "label", "start_s"], kind="stable", ignore_index=True)
    rec = pd.concat([rec, recordings_frame([rec_row(file=odd, duration_s=400.0, segments=40, input_dir="/card")])],
                    ignore_index=True)
    from monitor.store import Review

    # verdicts on no detection row (below threshold now): their own sheet, never dropped
    reviews = reviews_frame([Review("24E144055E080032", KNOWN, "bird", 50.0, 60.0, "no", "wind", "2024-01-01T00:00:00",
                                    "report.xlsx")])
    res = results_of(rec, seg, info, detections=det, reviews=reviews)
    fast, slow = tmp_path / "fast.xlsx", tmp_path / "slow.xlsx"
    write_workbook(fast, res)
    write_workbook(slow, res, fast_rows=False)
    a, b = load_workbook(fast), load_workbook(slow)
    sheets = SHEETS[:2] + ["Reviewed below threshold"] + SHEETS[2:]
    assert a.sheetnames == b.sheetnames == sheets
    other = a["Reviewed below threshold"]
    assert [c.value for c in other[2]][:6] == ["24E144055E080032", KNOWN, "bird", 50, 60,
                                               "below the threshold now (max score 0.050 < 0.5)"]
    assert [c.value for c in other[2]][7:9] == ["no", "wind"]
    for name in sheets:
        ca, ha = _cells(a[name])
        cb, hb = _cells(b[name])
        assert ca.keys() == cb.keys(), name
        for k in ca:
            va, vb = ca[k][0], cb[k][0]
            if isinstance(va, float):  # openpyxl writes 16 significant digits, the splice repr()'s round trip
                assert va == pytest.approx(vb, rel=1e-15, abs=0), (name, k)
                va = vb
            assert (va, *ca[k][1:]) == cb[k], (name, k)
        assert ha == hb, name
        assert a[name].auto_filter.ref == b[name].auto_filter.ref
    d = a["Detections"]
    assert d.max_row == len(det) + 1
    r = 2 + int(np.nonzero((det["file"] == KNOWN).to_numpy())[0][-1])  # a spliced row with a wall-clock time
    assert r > 2 and d[f"F{r}"].is_date and isinstance(d[f"F{r}"].value, datetime)
    assert d[f"B{r}"].value == KNOWN
    assert d[f"N{r}"].value == f"""=HYPERLINK('Run info'!$B$3&"/{KNOWN}","{Path(KNOWN).name}")"""
    o = 2 + int(np.nonzero((det["file"] == odd).to_numpy())[0][0])
    assert o > 3 and [d[f"B{i}"].value for i in range(o, o + 3)] == [odd] * 3  # escapes and the leading space survive
    # reviewers' verdicts and notes come back on their rows, text never a formula
    got = pd.read_excel(fast, sheet_name="Detections", keep_default_na=False)
    assert got["Verified"].tolist() == det["verified"].tolist() and got["Notes"].tolist() == det["notes"].tolist()
    # links are formulas of the card folder cell, with the name shown as their cached value; the hostile
    # name is inside a string literal (quotes doubled), never formula code
    with zipfile.ZipFile(fast) as z:
        xml = z.read("xl/worksheets/sheet2.xml").decode()
    assert "<hyperlink " not in xml and xml.count("<f>") == len(det)
    assert '&amp;"/=HYPERLINK(""http://x"",""y"").wav","x"",""y"").wav")</f>' in xml
    assert "<v>20230405_190200.WAV</v>" in xml
    shown = pd.read_excel(fast, sheet_name="Detections", keep_default_na=False)["Link"]  # cached values
    assert shown.tolist()[-1] == "20230406_050000.WAV"
    # (openpyxl cannot store a formula's cached value, so only the spliced rows show link names unrecalculated)
    pd.testing.assert_frame_equal(pd.read_excel(fast, sheet_name=None)["Detections"].drop(columns="Link"),
                                  pd.read_excel(slow, sheet_name=None)["Detections"].drop(columns="Link"))
