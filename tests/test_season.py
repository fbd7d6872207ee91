"""A field season loses nothing (issue 23): the next card of a recorder, side workbooks, re-deployments,
deployments tables, card-folder cells, messages.

The example card's real AudioMoth files, the CLI as a subprocess, workbooks edited with openpyxl and dated
with explicit save times (a reviewer's edits happen in order).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from openpyxl import load_workbook

from test_run_e2e import _cli, tiny_bundle  # noqa: F401  (fixture reuse)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sdcard"
FIRST = ["AM-POND/20240412_211500.WAV", "AM-POND/CONFIG.TXT", "AM-2018/5AEC2890.WAV"]
NEXT = ["AM-POND/20240413_060000.WAV", "AM-POND/CONFIG.TXT"]
POND = "24E144055E080032"  # the pond AudioMoth's ID, from its files' comments


def _mount(card: Path, files: list[str]) -> Path:
    """Swap the card: the folder holds exactly ``files`` of the example card (as a card reader mounts it)."""
    shutil.rmtree(card, ignore_errors=True)
    for rel in files:
        (card / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(EXAMPLE / rel, card / rel)
    return card


def _run(card: Path, out: Path, bundle: Path, *extra: str):
    return _cli("run", str(card), "--out", str(out), "--model", str(bundle), "--workers", "0", "--batch-size", "4",
                "--threshold", "all=0", *extra)


def _recordings(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "recordings.csv", keep_default_na=False, dtype=str)


def _detections(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "detections.csv", keep_default_na=False, dtype={"verified": str, "notes": str})


def _edit(path: Path, key: tuple[str, str, str], verdict: str | None, note: str | None, saved_at: float) -> None:
    """A reviewer sets Verified/Notes on the Detections row of (deployment, file, label) and saves at
    ``saved_at`` (epoch seconds)."""
    wb = load_workbook(path)
    ws = wb["Detections"]
    head = [c.value for c in ws[1]]
    d, f, lab = (head.index(h) for h in ("Deployment", "File", "Label"))
    for row in ws.iter_rows(min_row=2):
        if (row[d].value, row[f].value, row[lab].value) == key:
            row[head.index("Verified")].value = verdict
            row[head.index("Notes")].value = note
            break
    else:
        raise AssertionError(f"{key} not in {path.name}")
    wb.save(path)
    os.utime(path, (saved_at, saved_at))


def _verdict(out: Path, key: tuple[str, str, str]) -> tuple[str, str]:
    det = _detections(out)
    row = det[(det.deployment == key[0]) & (det.file == key[1]) & (det.label == key[2])]
    assert len(row) == 1, key
    return row.iloc[0].verified, row.iloc[0].notes


def test_the_next_card_adds_to_its_deployment_and_prune_archives_only_this_cards_files(tiny_bundle, tmp_path):
    card, out = tmp_path / "mnt" / "SDCARD", tmp_path / "out"
    assert _run(_mount(card, FIRST), out, tiny_bundle).returncode == 0
    first = (POND, "AM-POND/20240412_211500.WAV", "frog")
    _edit(out / "report.xlsx", first, "yes", "chorus", time.time())
    # the next card of the same AudioMoth, mounted at the same path, run into the same OUT with --prune
    res = _run(_mount(card, NEXT), out, tiny_bundle, "--prune")
    assert res.returncode == 0, res.stderr
    assert "missing" not in res.stderr + res.stdout and "archived" not in res.stderr
    rec = _recordings(out).set_index("file")
    assert rec.loc["AM-POND/20240412_211500.WAV", "status"] == "ok"  # the first card's recordings stay ok
    assert rec.loc["AM-POND/20240413_060000.WAV", "status"] == "ok"
    assert rec.loc["AM-POND/20240412_211500.WAV", "card"] != rec.loc["AM-POND/20240413_060000.WAV", "card"]
    assert _verdict(out, first) == ("yes", "chorus")
    assert "this card (SDCARD): 2 files" in res.stdout and "(2 cards, " in res.stdout

    # the first card again, with one of its files gone: only that file is missing; --prune lists and archives it
    res = _run(_mount(card, FIRST[:2]), out, tiny_bundle)
    assert res.returncode == 0 and "1 file analysed on an earlier scan of this card" in res.stderr
    assert "AM-2018/5AEC2890.WAV" in res.stderr
    assert _recordings(out).set_index("file").loc["AM-2018/5AEC2890.WAV", "status"] == "missing"
    res = _run(card, out, tiny_bundle, "--prune")
    assert res.returncode == 0 and "--prune: archived the results of 1 file" in res.stderr
    assert "AM-2018/5AEC2890.WAV" in res.stderr and "--restore-pruned" in res.stderr
    rec = _recordings(out).set_index("file")
    assert "AM-2018/5AEC2890.WAV" not in rec.index
    assert rec.loc["AM-POND/20240413_060000.WAV", "status"] == "ok"  # the next card's file is untouched
    assert _verdict(out, first) == ("yes", "chorus")
    # undone
    res = _cli("report", str(out), "--restore-pruned")
    assert res.returncode == 0 and "1 file back" in res.stderr
    assert _recordings(out).set_index("file").loc["AM-2018/5AEC2890.WAV", "status"] == "missing"


def test_an_older_side_workbook_never_undoes_a_newer_verdict(tiny_bundle, tmp_path):
    card, out = _mount(tmp_path / "SDCARD", FIRST[:1] + NEXT[:1]), tmp_path / "out"
    assert _run(card, out, tiny_bundle).returncode == 0
    a = (POND, "AM-POND/20240412_211500.WAV", "frog")
    b = (POND, "AM-POND/20240413_060000.WAV", "frog")
    c = (POND, "AM-POND/20240412_211500.WAV", "bird")
    t = time.time() - 10_000
    _edit(out / "report.xlsx", a, "yes", "first look", t)
    lock = out / "~$report.xlsx"
    lock.write_bytes(b"owner")  # report.xlsx is open in Excel
    res = _cli("report", str(out))
    assert res.returncode == 0, res.stderr
    (side,) = out.glob("report-*.xlsx")
    assert side.name in res.stdout and side.name in res.stderr
    assert _verdict(out, a) == ("yes", "first look")
    lock.unlink()
    # the reviewer changes their mind in report.xlsx, later edits another row of the older side workbook
    _edit(out / "report.xlsx", a, "no", "changed my mind", t + 100)
    assert _cli("report", str(out)).returncode == 0
    assert _verdict(out, a) == ("no", "changed my mind")
    _edit(side, b, "yes", "", t + 200)
    res = _cli("report", str(out))
    assert res.returncode == 0
    assert _verdict(out, a) == ("no", "changed my mind")  # the side workbook's old "yes" did not come back
    assert _verdict(out, b) == ("yes", "")
    # a clearing is a change like any other: the newest wins, and an older workbook does not undo it
    _edit(out / "report.xlsx", a, None, None, t + 300)
    assert _cli("report", str(out)).returncode == 0
    assert _verdict(out, a) == ("", "")
    _edit(side, b, "yes", "adult", t + 400)
    assert _cli("report", str(out)).returncode == 0
    assert _verdict(out, a) == ("", "") and _verdict(out, b) == ("yes", "adult")
    # two workbooks change one row differently: the later save wins and the warning names both
    _edit(out / "report.xlsx", c, "unsure", "", t + 500)
    _edit(side, c, "no", "wind", t + 600)
    res = _cli("report", str(out))
    assert res.returncode == 0 and _verdict(out, c) == ("no", "wind")
    (line,) = [x for x in res.stderr.splitlines() if "both changed the verdict" in x]
    assert line.startswith("monitor: warning: ") and "report.xlsx" in line and side.name in line


def test_a_new_deployment_name_for_a_stored_card_is_refused_unless_moved(tiny_bundle, tmp_path):
    card, out = _mount(tmp_path / "SDCARD", FIRST[:2]), tmp_path / "out"
    assert _run(card, out, tiny_bundle).returncode == 0
    key = (POND, "AM-POND/20240412_211500.WAV", "frog")
    _edit(out / "report.xlsx", key, "yes", "", time.time())
    res = _run(card, out, tiny_bundle, "--deployment", "POND-WEST")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"under deployment {POND}" in res.stderr and "--move" in res.stderr
    res = _run(card, out, tiny_bundle, "--deployment", "POND-WEST", "--move")
    assert res.returncode == 0, res.stderr
    rec = _recordings(out)
    assert rec["file"].is_unique  # nothing counted twice
    assert rec.set_index("file").loc["AM-POND/20240412_211500.WAV", "deployment"] == "POND-WEST"
    assert _verdict(out, ("POND-WEST", *key[1:])) == ("yes", "")
    wb = load_workbook(out / "report.xlsx", read_only=True)
    devices = list(wb["Devices"].iter_rows(values_only=True))
    head = list(devices[0])
    pond = [r for r in devices[1:] if r[head.index("Device ID")] == POND]
    assert len(pond) == 1 and pond[0][head.index("Files")] == 1


@pytest.mark.parametrize("table,msg", [
    ("deployment,device_id,start,end\nA,X1,2024-04-01,2024-04-10\nB,X1,2024-04-05,2024-04-20\n",
     "lines 2 and 3: both rows match files of device X1"),
    ("deployment,device_id\nA,X1\nB,X1\n", "lines 2 and 3"),
    ("deployment,device_id,start,end\nA,X1,2024-04-10,2024-04-01\n", "line 2: start 2024-04-10 is not before end"),
    ("deployment,device_id,latitude\nA,X1,138.5\n", "line 2: latitude 138.5 is outside -90..90"),
    ("deployment,time_zone\nA,UTC\n", "line 2: give a device_id or a folder"),
])
def test_a_bad_deployments_table_fails_naming_the_row_and_writes_nothing(tiny_bundle, tmp_path, table, msg):
    card = _mount(tmp_path / "SDCARD", FIRST[:1])
    (tmp_path / "deployments.csv").write_text(table)
    res = _run(card, tmp_path / "out", tiny_bundle, "--deployments", str(tmp_path / "deployments.csv"))
    assert res.returncode == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("monitor: error: ")
    assert not (tmp_path / "out").exists()  # a refused run writes nothing


def test_a_row_matching_no_file_is_a_warning(tiny_bundle, tmp_path):
    card = _mount(tmp_path / "SDCARD", FIRST[:1])
    (tmp_path / "d.csv").write_text(f"deployment,device_id,time_zone\nPOND,{POND},America/Los_Angeles\n"
                                    "CREEK,24F0000000000000,America/Los_Angeles\n")
    res = _run(card, tmp_path / "out", tiny_bundle, "--deployments", str(tmp_path / "d.csv"))
    assert res.returncode == 0 and "line 3 (CREEK) matched no file of this card" in res.stdout


def test_an_edited_card_folder_cell_is_kept_and_each_card_has_its_own(tiny_bundle, tmp_path):
    card, out = tmp_path / "mnt" / "SDCARD", tmp_path / "out"
    assert _run(_mount(card, FIRST[:1]), out, tiny_bundle).returncode == 0
    wb = load_workbook(out / "report.xlsx")
    ws = wb["Run info"]
    assert ws["A3"].value.startswith("card folder: card 1 (SDCARD;")
    ws["B3"].value = "Z:/archive/card-1"
    wb.save(out / "report.xlsx")
    assert _cli("report", str(out)).returncode == 0
    assert _run(_mount(card, NEXT[:1]), out, tiny_bundle).returncode == 0  # the next card, same mount path
    info = load_workbook(out / "report.xlsx")["Run info"]
    cells = {r[0].value: r[1].value for r in info.iter_rows(min_row=2, max_col=2) if
             str(r[0].value).startswith("card folder")}
    assert len(cells) == 2
    (one,) = [v for k, v in cells.items() if k.startswith("card folder: card 1 ")]
    (two,) = [v for k, v in cells.items() if k.startswith("card folder: card 2 ")]
    assert one == "Z:/archive/card-1" and two == str(card)
    det = load_workbook(out / "report.xlsx")["Detections"]
    links = [c.value for c in det["N"] if isinstance(c.value, str) and "HYPERLINK" in c.value]
    assert any("$B$3" in x for x in links) and any("$B$4" in x for x in links)


def test_errors_go_to_the_log_of_an_existing_out_and_messages_have_one_style(tiny_bundle, tmp_path):
    card, out = _mount(tmp_path / "SDCARD", FIRST[:1]), tmp_path / "out"
    res = _run(card, out, tiny_bundle)
    assert res.returncode == 0
    assert "WARNING:" not in res.stderr and "1 files" not in res.stdout + res.stderr
    assert res.stdout.splitlines()[0].startswith("monitor: 1 file: 1 ok")
    bad = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, bad)
    with open(bad / "model.safetensors", "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    res = _run(card, out, bad)
    assert res.returncode == 2 and res.stderr.startswith("monitor: error: ")
    assert res.stderr.strip().split("monitor: error: ")[1] in (out / "monitor.log").read_text()
    res = _run(card, tmp_path / "new-out", bad)
    assert res.returncode == 2 and not (tmp_path / "new-out").exists()
