"""Field work end to end through the CLI: a card from three AudioMoths in two time zones (one left on UTC with
no time zone given) with a deployments table; label filters and one threshold for every label; links that
follow the card-folder cell of Run info."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import openpyxl
import pandas as pd
import pytest

from monitor.metadata.writer import write_audiomoth_wav

A, B, C = "24E144055E0800A1", "24E144055E0800B2", "24E144055E0800C3"
SR_HZ = 16000


def _cli(*args, cwd=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "monitor", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=cwd)


def _audiomoth(path, when: str, zone: str, device: str, seed: int):
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal(SR_HZ * 10) * 32767).clip(-32768, 32767).astype(np.int16)
    comment = (f"Recorded at {when} ({zone}) by AudioMoth {device} at gain setting 2 while battery state "
               "was 4.1V and temperature was 11.5C.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_audiomoth_wav(path, x, SR_HZ, comment, device_id=device)


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """One run of the bundled demo model over the card with `--threshold all=0` (every segment of every label
    is a detection, so the times of every file show in every output)."""
    root = tmp_path_factory.mktemp("field")
    card = root / "card"
    # A: left on UTC, deployed in California (PDT, UTC-7); B: set to UTC+10, in Brisbane; C: on UTC, not listed
    _audiomoth(card / "POND" / "20240412_020000.WAV", "02:00:00 12/04/2024", "UTC", A, 1)
    _audiomoth(card / "REEF" / "20240412_213000.WAV", "21:30:00 12/04/2024", "UTC+10", B, 2)
    _audiomoth(card / "OTHER" / "20240412_020000.WAV", "02:00:00 12/04/2024", "UTC", C, 3)
    table = root / "deployments.csv"
    table.write_text("deployment,device_id,time_zone,latitude,longitude,notes\n"
                     f"pond-west,{A},America/Los_Angeles,38.54,-121.74,left on UTC\n"
                     f"reef-east,{B},+10:00,-27.47,153.03,\n")
    out = root / "out"
    r = _cli("run", card, "--out", out, "--deployments", table, "--threshold", "all=0", "--workers", "0",
             cwd=root)
    assert r.returncode == 0, r.stderr
    return root, card, out, r


def test_deployments_table_local_times_offsets_and_utc_warning(field):
    root, card, out, r = field
    rec = pd.read_csv(out / "recordings.csv", keep_default_na=False).set_index("deployment")
    assert sorted(rec.index) == sorted(["pond-west", "reef-east", C])
    # A's 02:00 UTC is 19:00 the evening before in California; B is already local; C is shown as written
    assert rec.loc["pond-west", "start_time"] == "2024-04-11T19:00:00-07:00"
    assert rec.loc["pond-west", "utc_offset"] == "-07:00"
    assert rec.loc["reef-east", "start_time"] == "2024-04-12T21:30:00+10:00"
    assert rec.loc[C, "start_time"] == "2024-04-12T02:00:00+00:00"
    assert float(rec.loc["pond-west", "latitude"]) == pytest.approx(38.54)

    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    assert len(det) == 6 and set(det["label"]) == {"frog", "bird"}  # all=0: both labels, every file
    starts = dict(zip(det["deployment"], det["start_time"]))
    assert starts == {"pond-west": "2024-04-11T19:00:00-07:00", "reef-east": "2024-04-12T21:30:00+10:00",
                      C: "2024-04-12T02:00:00+00:00"}

    # the warning names the recorder left on UTC without a time zone, and only that one
    warn = [line for line in r.stdout.splitlines() + r.stderr.splitlines() if "UTC" in line and C in line]
    assert warn, r.stdout + r.stderr
    assert not any(A in line and "UTC" in line and "warning" in line.lower() for line in r.stdout.splitlines())
    wb = openpyxl.load_workbook(out / "report.xlsx")
    info = [(row[0].value, row[1].value) for row in wb["Run info"].iter_rows() if row[0].value == "warning"]
    assert len(info) == 1 and C in info[0][1] and "UTC" in info[0][1]

    summary = pd.read_excel(out / "report.xlsx", sheet_name="Summary")
    offsets = dict(zip(summary["Device ID"].astype(str), summary["UTC Offset"]))
    assert offsets == {A: "-07:00", B: "+10:00", C: "+00:00"}
    stamps = dict(zip(summary["Device ID"].astype(str), summary["Timestamp"]))
    assert stamps[A] == pd.Timestamp("2024-04-11 19:00:00")  # Excel has no zones: local wall clock + offset column


def test_presence_by_hour_is_per_deployment_in_its_own_local_time(field):
    _, _, out, _ = field
    rows = [[c.value for c in r] for r in openpyxl.load_workbook(out / "report.xlsx")["Presence"].iter_rows()]
    assert rows[0][:5] == ["Deployment", "Count of", "Label", "2024-04-11", "2024-04-12"]
    head = next(i for i, r in enumerate(rows) if r[:4] == ["Deployment", "Count of", "Label", "00"])
    nights = {tuple(r[:3]): r[3:5] for r in rows[1:head] if r[1] == "detections"}
    assert nights[("pond-west", "detections", "frog")] == [1, 0]  # 19:00 on the 11th: the night of the 11th
    assert nights[("reef-east", "detections", "frog")] == [0, 1]
    assert nights[(C, "detections", "frog")] == [1, 0]  # 02:00 on the 12th belongs to the night of the 11th
    hour = {tuple(r[:3]): r[3:27] for r in rows[head + 1:] if r[1] == "detections"}
    assert hour[("pond-west", "detections", "frog")].index(1) == 19
    assert hour[("reef-east", "detections", "frog")].index(1) == 21
    assert hour[(C, "detections", "frog")].index(1) == 2
    total = hour[("All deployments", "detections", "frog")]
    assert [i for i, v in enumerate(total) if v] == [2, 19, 21] and sum(total) == 3


def test_links_follow_the_card_folder_cell(field, tmp_path):
    """Every link is built from one card-folder cell of Run info: move the card, change that cell."""
    _, card, out, _ = field
    wb = openpyxl.load_workbook(out / "report.xlsx")
    info = wb["Run info"]
    folder_cells = [row[1] for row in info.iter_rows() if str(row[0].value).startswith("card folder")]
    assert len(folder_cells) == 1 and folder_cells[0].value == card.resolve().as_posix()
    ws = wb["Detections"]
    head = [c.value for c in ws[1]]
    links = [r[head.index("Link")].value for r in ws.iter_rows(min_row=2)]
    assert len(links) == 6
    ref = f"'Run info'!${folder_cells[0].column_letter}${folder_cells[0].row}"

    def target(formula: str, sheet) -> str:
        """Evaluate the link formula the way a spreadsheet does: cell & "/relative/path"."""
        m = re.fullmatch(r'=HYPERLINK\((.+?)&"(.+?)","(.+?)"\)', formula)
        assert m and m.group(1) == ref, formula
        return sheet[m.group(1).split("!")[1].replace("$", "")].value + m.group(2)

    assert {target(f, info) for f in links} == {
        card.resolve().as_posix() + p for p in ("/POND/20240412_020000.WAV", "/REEF/20240412_213000.WAV",
                                                "/OTHER/20240412_020000.WAV")}
    folder_cells[0].value = "E:/cards/2024-04"  # the card mounted elsewhere: one cell changed
    moved = tmp_path / "moved.xlsx"
    wb.save(moved)
    again = openpyxl.load_workbook(moved)
    links = [r[head.index("Link")].value for r in again["Detections"].iter_rows(min_row=2)]
    assert "E:/cards/2024-04/REEF/20240412_213000.WAV" in {target(f, again["Run info"]) for f in links}


def test_labels_filter_and_one_threshold_for_all(field, tmp_path):
    root, _, out, _ = field
    import shutil

    out2 = tmp_path / "out"
    shutil.copytree(out, out2)
    r = _cli("report", out2, "--labels", "FROG", "--threshold", "all=0.999")
    assert r.returncode == 0, r.stderr
    seg = pd.read_csv(out2 / "segments.csv")
    assert "frog" in seg.columns and "bird" not in seg.columns  # case-insensitive, only that label
    det = pd.read_csv(out2 / "detections.csv")
    assert set(det["label"]) <= {"frog"}
    assert (det["score_max"] >= 0.999).all()
    scores = seg["frog"].to_numpy()
    assert len(det) == int((scores >= 0.999).sum())  # one threshold applied to the label kept
    wb = openpyxl.load_workbook(out2 / "report.xlsx")
    labels_in_summary = {r[2].value for r in wb["Summary"].iter_rows(min_row=2)}
    assert "bird" not in labels_in_summary

    r = _cli("report", out2, "--labels", "frgo")
    assert r.returncode == 2 and "frog" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = _cli("report", out2, "--threshold", "all=1.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_deployments_table_rows_time_ranges_daylight_saving_and_mistakes(tmp_path):
    from datetime import datetime, timezone

    from monitor.deployments import read_deployments, to_local
    from monitor.errors import MonitorError

    path = tmp_path / "deployments.csv"
    path.write_text("Deployment,device_id,folder,time_zone,start,end,notes\n"
                    f"pond-west,{A},,America/Los_Angeles,2024-01-01,2024-06-01,first site\n"
                    f"creek,{A},,America/Los_Angeles,2024-06-01,,moved in June\n"
                    ",,,,,,\n"
                    "reef,,REEF,UTC+10,,,\n")
    t = read_deployments(path)
    winter = datetime(2024, 1, 15, 4, 0, tzinfo=timezone.utc)
    summer = datetime(2024, 7, 15, 3, 0, tzinfo=timezone.utc)
    assert t.match("x/a.WAV", A.lower(), "card", winter).deployment == "pond-west"  # IDs in any case
    assert t.match("x/a.WAV", A, "card", summer).deployment == "creek"  # the recorder moved: its second row
    assert t.match("x/a.WAV", A, "card", None) is None  # a time range cannot match an unknown start
    assert t.match("REEF/a.WAV", "ffff", "card", None).deployment == "reef"
    assert t.match("POND/a.WAV", "ffff", "card", winter) is None
    tz = t.time_zone("pond-west")
    assert to_local(winter, tz).isoformat() == "2024-01-14T20:00:00-08:00"  # PST in January
    assert to_local(summer, tz).isoformat() == "2024-07-14T20:00:00-07:00"  # PDT in July
    assert to_local(datetime(2024, 7, 15, 21, 0), tz).isoformat() == "2024-07-15T21:00:00-07:00"  # no offset: local

    for text, msg in [("deployment,site_code\nx,1\n", "unknown column 'site_code'"),
                      ("device_id\nA\n", "needs a 'deployment' column"),
                      ("deployment,time_zone\nx,Mars/Olympus\n", "line 2: time_zone"),
                      ("deployment,start\nx,12/04/2024\n", "line 2: start '12/04/2024' is not a date/time"),
                      ("deployment,latitude\nx,north\n", "line 2: latitude must be a number"),
                      ("deployment\n", "has no rows")]:
        path.write_text(text)
        with pytest.raises(MonitorError, match=re.escape(msg)):
            read_deployments(path)
