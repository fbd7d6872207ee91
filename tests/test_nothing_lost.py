"""Nothing the user did is ever lost, and nothing is silently wrong (issue 14).

Real files, real workbook edits with openpyxl (as Excel would save them), the CLI as a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from openpyxl import load_workbook

from conftest import write_wav
from test_run_e2e import _cli, tiny_bundle  # noqa: F401  (fixture reuse)


def _run(card: Path, out: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return _cli("run", str(card), "--out", str(out), "--model", str(bundle), "--workers", "0", "--batch-size", "4",
                *extra)


def _card(root: Path, n: int = 4, seed: int = 0) -> Path:
    for i in range(n):
        write_wav(root / f"2024041{i}_211500.WAV", 30.0, 16000, noise=0.2, seed=seed + i, freq_hz=400 + 300 * i)
    return root


def _audiomoth_card(root: Path, device: str, seed: int) -> Path:
    """Two files named as every AudioMoth on this schedule names them, with this recorder's ID in the header."""
    from monitor.metadata.audiomoth import format_comment
    from monitor.metadata.writer import write_audiomoth_wav

    rng = np.random.default_rng(seed)
    for day in (12, 13):
        start = datetime(2024, 4, day, 21, 15, tzinfo=timezone(timedelta(hours=-7)))
        x = (rng.standard_normal(16000 * 20) * 3000).astype(np.int16)
        write_audiomoth_wav(root / f"202404{day}_211500.WAV", x, 16000,
                            format_comment(start, device, gain="medium", battery_v=4.1, temperature_c=11.0),
                            device_id=device)
    return root


def _det_sheet(path: Path) -> pd.DataFrame:
    return pd.read_excel(path, sheet_name="Detections", keep_default_na=False)


def _fill(path: Path, verdicts: dict[int, tuple[str, str]], sheet: str = "Detections") -> None:
    """A reviewer types verdicts into rows (0-based data rows) and saves, as Excel would."""
    wb = load_workbook(path)
    ws = wb[sheet]
    head = [c.value for c in ws[1]]
    v, n = head.index("Verified") + 1, head.index("Notes") + 1
    for row, (verdict, note) in verdicts.items():
        ws.cell(row=row + 2, column=v).value = verdict or None  # ws.cell(..., value=None) would not clear it
        ws.cell(row=row + 2, column=n).value = note or None
    wb.save(path)


@pytest.fixture(scope="module")
def reviewed(tiny_bundle, tmp_path_factory):
    """A run, a threshold that gives several detections, and three verdicts typed into the workbook."""
    base = tmp_path_factory.mktemp("reviewed")
    card, out = _card(base / "card", n=6), base / "out"
    assert _run(card, out, tiny_bundle).returncode == 0
    seg = pd.read_csv(out / "segments.csv")
    thr = float(np.quantile(seg["frog"], 0.5))
    assert _cli("report", str(out), "--threshold", f"frog={thr}").returncode == 0
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    frog = det[det.label == "frog"].reset_index()
    assert len(frog) >= 3
    rows = frog["index"].tolist()[:3]
    _fill(out / "report.xlsx", {rows[0]: ("yes", "clear chorus"), rows[1]: ("no", "wind"), rows[2]: ("unsure", "")})
    keys = [tuple(det.loc[r, ["deployment", "file", "label", "start_s"]]) for r in rows]
    return card, out, keys, thr


def _verdicts(out: Path) -> dict[tuple, tuple[str, str]]:
    det = pd.read_csv(out / "detections.csv", keep_default_na=False, dtype={"verified": str, "notes": str})
    return {tuple(r[["deployment", "file", "label", "start_s"]]): (r.verified, r.notes)
            for _, r in det.iterrows() if r.verified or r.notes}


def test_verdicts_survive_rebuilds_threshold_changes_and_resume(reviewed, tiny_bundle):
    card, out, keys, thr = reviewed
    want = dict(zip(keys, [("yes", "clear chorus"), ("no", "wind"), ("unsure", "")]))
    # a plain rebuild: read back from the workbook into the store, carried into the new workbook and the CSV
    res = _cli("report", str(out))
    assert res.returncode == 0, res.stderr
    assert _verdicts(out) == want
    sheet = _det_sheet(out / "report.xlsx")
    assert sorted(sheet.loc[sheet.Verified != "", "Verified"]) == ["no", "unsure", "yes"]
    backups = list((out / "backups").glob("report-*.xlsx"))
    assert backups, "the reviewed workbook must be kept before it is replaced"
    assert sorted(_det_sheet(backups[0]).Verified.replace("", np.nan).dropna()) == ["no", "unsure", "yes"]
    # a higher threshold drops one reviewed detection: its verdict is kept and shown on its own sheet
    seg = pd.read_csv(out / "segments.csv")
    k0 = keys[0]
    s0 = seg[(seg.deployment == k0[0]) & (seg.file == k0[1]) & (seg.start_s >= k0[3] - 1e-6)].frog.iloc[0]
    high = float(np.nextafter(s0, 1.0))
    assert _cli("report", str(out), "--threshold", f"frog={high}").returncode == 0
    assert k0 not in _verdicts(out)
    other = pd.read_excel(out / "report.xlsx", sheet_name="Reviewed below threshold", keep_default_na=False)
    row = other[(other.File == k0[1]) & (other["Start (s)"] == k0[3])].iloc[0]
    assert (row.Verified, row.Notes) == ("yes", "clear chorus")
    assert "below the threshold" in row["Why Not In Detections"] or "merged" in row["Why Not In Detections"]
    # a resume with nothing to do keeps the verdicts and the threshold set with `monitor report`
    res = _run(card, out, tiny_bundle)
    assert res.returncode == 0, res.stderr
    assert "resuming: 6 of 6 files already done" in res.stderr
    assert json.loads((out / "run.json").read_text())["thresholds"]["frog"] == pytest.approx(high)
    # back to the old threshold: the verdict is on its detection row again
    assert _cli("report", str(out), "--threshold", f"frog={thr}").returncode == 0
    assert _verdicts(out) == want


def test_notebook_verdicts_and_cleared_cells(reviewed):
    from monitor.notebook import record_verdicts, reviewed as reviews_of

    _, out, keys, _ = reviewed
    det = pd.read_csv(out / "detections.csv", keep_default_na=False)
    row = next(i for i, r in det.iterrows() if tuple(r[["deployment", "file", "label", "start_s"]]) == keys[2])
    assert record_verdicts(out, {row: "yes"}, {row: "heard it twice"}) == 1
    got = _verdicts(out)
    assert got[keys[2]] == ("yes", "heard it twice") and got[keys[1]] == ("no", "wind")
    revs = reviews_of(out)
    assert len(revs) == 3 and set(revs.columns) >= {"deployment", "file", "path", "label", "verified", "notes"}
    assert all(Path(p).is_file() for p in revs.path)  # training can find the audio
    # a reviewer clears a cell in the latest workbook: the verdict is cleared, nothing else changes
    sheet = _det_sheet(out / "report.xlsx")
    r = int(np.nonzero((sheet.File == keys[1][1]) & (sheet["Start (s)"] == keys[1][3])
                       & (sheet.Label == "frog"))[0][0])
    _fill(out / "report.xlsx", {r: ("", "")})
    assert _cli("report", str(out)).returncode == 0
    got = _verdicts(out)
    assert keys[1] not in got and got[keys[2]] == ("yes", "heard it twice")


def test_open_workbook_is_not_overwritten(reviewed):
    _, out, _, _ = reviewed
    lock = out / "~$report.xlsx"  # Excel's owner file while the workbook is open
    lock.write_bytes(b"\x00" * 162)
    before = (out / "report.xlsx").read_bytes()
    try:
        res = _cli("report", str(out))
    finally:
        lock.unlink()
    assert res.returncode == 0, res.stderr
    assert (out / "report.xlsx").read_bytes() == before
    side = sorted(out.glob("report-*.xlsx"))
    assert side and "was not replaced" in res.stderr and side[-1].name in res.stderr
    assert _verdicts(out)  # the new workbook beside it still carries every verdict
    assert sorted(_det_sheet(side[-1]).Verified.replace("", np.nan).dropna()) == sorted(
        _det_sheet(out / "report.xlsx").Verified.replace("", np.nan).dropna())


def test_two_audiomoths_with_the_same_file_names_share_one_out(tiny_bundle, tmp_path):
    mount = tmp_path / "media" / "SDCARD"  # every card is mounted at the same path
    out = tmp_path / "out"
    _audiomoth_card(mount, "24E144055E080032", seed=1)
    assert _run(mount, out, tiny_bundle).returncode == 0
    shutil.rmtree(mount)
    _audiomoth_card(mount, "24E1440A5E0800FF", seed=2)
    res = _run(mount, out, tiny_bundle)
    assert res.returncode == 0, res.stderr
    rec = pd.read_csv(out / "recordings.csv", keep_default_na=False)
    assert len(rec) == 4 and set(rec.status) == {"ok"}
    assert sorted(set(rec.deployment)) == ["24E144055E080032", "24E1440A5E0800FF"]
    assert rec.groupby("deployment").file.apply(sorted).tolist() == [["20240412_211500.WAV", "20240413_211500.WAV"]] * 2
    seg = pd.read_csv(out / "segments.csv")
    assert seg.groupby("deployment").size().tolist() == [4, 4]
    assert not seg.duplicated(["deployment", "file", "segment"]).any()
    # card A's results are intact: identical to a run of card A alone
    alone = tmp_path / "alone"
    shutil.rmtree(mount)
    _audiomoth_card(mount, "24E144055E080032", seed=1)
    assert _run(mount, alone, tiny_bundle).returncode == 0
    a = pd.read_csv(alone / "segments.csv")
    b = seg[seg.deployment == "24E144055E080032"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wb = load_workbook(out / "report.xlsx")
    assert {c.value for c in wb["Summary"]["B"][1:]} == {"24E144055E080032", "24E1440A5E0800FF"}
    # card A again without one file: it is marked missing, its results kept; only --prune removes them
    (mount / "20240413_211500.WAV").unlink()
    res = _run(mount, out, tiny_bundle)
    assert res.returncode == 0 and "no longer on this card" in res.stderr
    rec = pd.read_csv(out / "recordings.csv", keep_default_na=False).set_index(["deployment", "file"])
    assert rec.loc[("24E144055E080032", "20240413_211500.WAV"), "status"] == "missing"
    assert rec.loc[("24E1440A5E0800FF", "20240413_211500.WAV"), "status"] == "ok"
    assert len(pd.read_csv(out / "segments.csv")) == 8
    res = _run(mount, out, tiny_bundle, "--prune")
    assert res.returncode == 0, res.stderr
    rec = pd.read_csv(out / "recordings.csv", keep_default_na=False)
    assert len(rec) == 3 and "missing" not in set(rec.status)
    assert len(pd.read_csv(out / "segments.csv")) == 6


def test_cards_without_recorder_ids_need_a_name(tiny_bundle, tmp_path):
    mount, out = tmp_path / "SDCARD", tmp_path / "out"
    _card(mount, n=2, seed=0)
    assert _run(mount, out, tiny_bundle).returncode == 0
    before = pd.read_csv(out / "segments.csv")
    shutil.rmtree(mount)
    _card(mount, n=2, seed=50)  # another recorder, same names, no ID in the files
    res = _run(mount, out, tiny_bundle)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--deployment NAME" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    pd.testing.assert_frame_equal(pd.read_csv(out / "segments.csv"), before)  # nothing was replaced
    res = _run(mount, out, tiny_bundle, "--deployment", "pond-north")
    assert res.returncode == 0, res.stderr
    seg = pd.read_csv(out / "segments.csv")
    assert sorted(set(seg.deployment)) == ["SDCARD", "pond-north"] and len(seg) == 2 * len(before)
    raven = sorted(p.name for p in (out / "raven").iterdir())
    assert any(n.startswith("pond-north__") for n in raven) == any(
        d == "pond-north" for d in pd.read_csv(out / "detections.csv").deployment)


def _damaged_copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    w = dest / "model.safetensors"
    data = bytearray(w.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 400] = bytes(400)  # 400 bytes overwritten, same size
    w.write_bytes(bytes(data))
    return dest


def test_damaged_weights_fail_in_one_line(tiny_bundle, tmp_path):
    card = _card(tmp_path / "card", n=1)
    bad = _damaged_copy(tiny_bundle, tmp_path / "bad")
    res = _run(card, tmp_path / "out", bad)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "damaged" in res.stderr and "sha256" in res.stderr and "model.safetensors" in res.stderr


def test_model_giving_nan_fails_files_with_a_reason(tiny_bundle, tmp_path):
    import torch

    from monitor.model.bundle import load_bundle, save_bundle

    b = load_bundle(tiny_bundle)
    model = b.build_model()
    with torch.no_grad():
        model.mlp_head[1].bias.fill_(float("nan"))
    nan = save_bundle(tmp_path / "nan", model, name="nan", version="0", labels=b.labels, task=b.task,
                      preprocessing=b.preprocessing, thresholds=b.thresholds).path
    card = _card(tmp_path / "card", n=2)
    res = _run(card, tmp_path / "out", nan)
    assert res.returncode == 0, res.stderr
    rec = pd.read_csv(tmp_path / "out" / "recordings.csv", keep_default_na=False)
    assert set(rec.status) == {"failed"} and rec.reason.str.contains("non-finite scores").all()
    assert "failed: " in res.stdout and "2 failed" in res.stdout
    assert len(pd.read_csv(tmp_path / "out" / "segments.csv")) == 0


def test_interrupted_run_says_so_and_resume_equals_full(tiny_bundle, tmp_path):
    import signal

    from test_hardening import _slow_card, _wait_for_ok_files

    card = _slow_card(tmp_path / "card")
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "run", str(card), "--out", str(out), "--model",
                             str(tiny_bundle), "--workers", "0", "--batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_ok_files(proc, out, 2)
    assert proc.poll() is None, "run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    info = json.loads((out / "run.json").read_text())
    assert info["completed"] is False and info["status"].startswith("INCOMPLETE")
    assert 0 < info["files_done"] < 12 and info["files_done"] + info["files_left"] == 12
    ri = pd.read_excel(out / "report.xlsx", sheet_name="Run info")
    assert ri.Key.iloc[0] == "status" and ri.Value.iloc[0].startswith("INCOMPLETE")
    res = _run(card, out, tiny_bundle)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {info['files_done']} of 12 files already done" in res.stderr
    assert json.loads((out / "run.json").read_text())["completed"] is True
    full = tmp_path / "full"
    assert _run(card, full, tiny_bundle).returncode == 0
    for name in ("segments.csv", "detections.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(full / name), check_exact=True)
    assert not (out / "monitor.lock").exists()


def _mount_tmpfs(path: Path, *opts: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny file system (tmpfs): read-only and full folders as a user meets them."""
    mounts = []

    def make(name: str, *opts: str) -> Path:
        p = tmp_path / name
        if not _mount_tmpfs(p, *opts):
            pytest.skip("needs root to mount a tmpfs (CI runs as root)")
        mounts.append(p)
        return p

    yield make
    for p in mounts:
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def test_read_only_output_folder_one_line(tiny_bundle, tmp_path, small_disk):
    card = _card(tmp_path / "card", n=1)
    ro = small_disk("ro", "ro,size=1m")
    res = _run(card, ro / "out", tiny_bundle)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "read-only" in res.stderr
    res = _cli("report", str(ro))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_full_output_folder_one_line_and_store_intact(tiny_bundle, tmp_path, small_disk):
    card = _card(tmp_path / "card", n=4)
    full = small_disk("full", "size=160k")
    out = full / "out"
    res = _run(card, out, tiny_bundle)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and ("space" in res.stderr or "full" in res.stderr)
    # the store is consistent: copied to a roomy disk, a re-run completes and equals a clean run
    roomy = tmp_path / "roomy"
    if (out / "monitor.sqlite").exists():
        shutil.copytree(out, roomy)
    assert _run(card, roomy, tiny_bundle).returncode == 0
    clean = tmp_path / "clean"
    assert _run(card, clean, tiny_bundle).returncode == 0
    pd.testing.assert_frame_equal(pd.read_csv(roomy / "segments.csv"), pd.read_csv(clean / "segments.csv"))
