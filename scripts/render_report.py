"""Render sheets of a ``report.xlsx`` to PNG for the README: LibreOffice -> PDF -> pdftoppm -> PNG.

Not part of CI. Needs the Debian packages ``libreoffice-calc`` and ``poppler-utils``
(``apt-get install -y libreoffice-calc poppler-utils``).

    python scripts/render_report.py OUT_DIR/report.xlsx                 # Summary and Detections
    python scripts/render_report.py --demo                              # a demo night of AudioMoth files
    python scripts/render_report.py REPORT.xlsx --sheet Presence --out docs/images

Each sheet is rendered from a copy of the workbook holding only that sheet (its page setup, widths
and styles kept), first page only, to ``<out>/report_<sheet>.png``. Charts are not kept by the copy.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def demo_reports(out_dir: Path) -> Path:
    """Write reports for a made-up but realistic deployment: two AudioMoths, one night, hourly files."""
    import numpy as np
    import pandas as pd

    from monitor.report import write_reports
    from monitor.results import RunInfo, build_results, recordings_frame

    rng = np.random.default_rng(7)
    labels = ["frog", "bird"]
    tz = timezone(timedelta(hours=-7))
    devices = {"24E144055E080032": ("pond_north", 4.4, 9.5), "24E1440363E0B2C1": ("pond_south", 3.7, 8.1)}
    rec_rows, seg_parts = [], []
    for dev, (site, volts, temp) in devices.items():
        for h in range(6):
            start = datetime(2024, 4, 12, 19, 0, tzinfo=tz) + timedelta(hours=2 * h)
            n = 60 if not (dev.endswith("C1") and h == 5) else 23  # the south unit stopped early: low battery
            rel = f"{site}/{start:%Y%m%d_%H%M%S}.WAV"
            rec_rows.append(dict(
                deployment=site, input_dir="/media/SDCARD", file=rel, status="ok", reason="", recorder="AudioMoth", device_id=dev, deployment_id=site,
                firmware="1.10.1", start_time=start.isoformat(), utc_offset="-07:00",
                temperature_c=round(temp - 1.1 * h + rng.normal(0, 0.2), 1), battery_v=round(volts - 0.08 * h, 1),
                gain="medium", sample_rate_hz=48000, channels=1, duration_s=10.0 * n, segments=n, latitude=np.nan,
                longitude=np.nan, filter="", trigger="",
                stop_reason="low voltage" if n < 60 else "", comment="", warnings=""))
            s0 = 10.0 * np.arange(n)
            hour = (19 + 2 * h) % 24
            frog_p = 0.9 if hour in (19, 21, 23) else 0.25
            bird_p = 0.8 if hour in (5,) else 0.02
            seg = pd.DataFrame({"deployment": site, "file": rel, "segment": np.arange(n), "start_s": s0, "end_s": s0 + 10,
                                "start_time": [(start + timedelta(seconds=float(s))).isoformat() for s in s0]})
            for lab, p in (("frog", frog_p), ("bird", bird_p)):
                on = np.convolve(rng.random(n) < p * 0.25, np.ones(3), "same") > 0
                seg[lab] = np.clip(np.where(on, rng.uniform(0.55, 0.99, n), rng.uniform(0.0, 0.35, n)), 0, 1)
            seg_parts.append(seg)
    skipped = [("pond_north/CONFIG.TXT", "skipped", "not an audio file"),
               ("pond_south/._20240412_190000.WAV", "skipped", "macOS metadata file (._*), not a recording"),
               ("pond_south/20240413_070000.WAV", "skipped", "empty file (0 bytes): the recorder stopped while writing"),
               ("pond_north/20240413_070000.WAV", "failed", "could not be read: the WAV data is truncated "
                                                            "(SD card write error?)")]
    for f, s, r in skipped:
        rec_rows.append(dict(rec_rows[0], deployment=f.split("/")[0], file=f, status=s, reason=r, recorder="", device_id="", deployment_id="",
                             firmware="", start_time="", utc_offset="", temperature_c=np.nan, battery_v=np.nan,
                             gain="", sample_rate_hz=np.nan, channels=np.nan, duration_s=np.nan, segments=0,
                             stop_reason=""))
    recordings = recordings_frame(sorted(rec_rows, key=lambda r: (r["deployment"], r["file"])))
    segments = pd.concat(seg_parts, ignore_index=True).sort_values(["deployment", "file", "segment"]
                                                                   ).reset_index(drop=True)
    thresholds = {"frog": 0.5, "bird": 0.5}
    status = recordings["status"].value_counts().to_dict()
    info = {"model": {"name": "frogs-birds-ast", "version": "1.2.0", "sha256": "3f" * 32, "path": "models/frogs-birds-ast"},
            "models": [], "labels": labels, "thresholds": thresholds, "task": "multilabel",
            "preprocessing": {"segment": {"window_s": 10.0, "hop_s": 10.0}, "band": {"low_hz": 150.0, "high_hz": 7500.0},
                              "resample": {"sample_rate_hz": 16000}, "fbank": {"num_mel_bins": 128}},
            "package_version": "0.1.0", "command": "monitor run /media/SDCARD --out results/2024-04-12",
            "input_dir": "/media/SDCARD", "out_dir": str(out_dir), "started": "2024-04-14T09:12:03-07:00",
            "ended": "2024-04-14T09:31:47-07:00",
            "device": "cpu", "precision": "fp32"}
    run = RunInfo.from_json(info)
    results = build_results(recordings, segments, labels, thresholds, run)
    results.run.counts = {"found": len(recordings), "ok": status.get("ok", 0), "skipped": status.get("skipped", 0),
                          "failed": status.get("failed", 0), "segments": len(segments),
                          "detections": len(results.detections)}
    write_reports(out_dir, results)
    return out_dir / "report.xlsx"


def one_sheet_copy(xlsx: Path, sheet: str, dst: Path) -> Path:
    """Copy of ``xlsx`` with only ``sheet`` (openpyxl; charts are not carried over)."""
    from openpyxl import load_workbook

    wb = load_workbook(xlsx)
    if sheet not in wb.sheetnames:
        sys.exit(f"render_report: no sheet {sheet!r} in {xlsx} (sheets: {', '.join(wb.sheetnames)})")
    for name in wb.sheetnames:
        if name != sheet:
            del wb[name]
    wb.active = 0
    wb.save(dst)
    return dst


def crop(png: Path, max_aspect: float = 0.55, margin_px: int = 12) -> None:
    """Trim the white page margins; keep at most ``max_aspect`` x width of height (the first rows)."""
    from PIL import Image, ImageChops

    img = Image.open(png).convert("RGB")
    bbox = ImageChops.difference(img, Image.new("RGB", img.size, "white")).getbbox()
    if bbox is None:
        return
    left, top, right, bottom = bbox
    left, top = max(0, left - margin_px), max(0, top - margin_px)
    right, bottom = min(img.width, right + margin_px), min(img.height, bottom + margin_px)
    bottom = min(bottom, top + int(max_aspect * (right - left)))
    img.crop((left, top, right, bottom)).save(png, optimize=True)


def render(xlsx: Path, sheet: str, out_png: Path, dpi: int = 160) -> Path:
    """Sheet -> PDF (LibreOffice, headless) -> first page PNG (pdftoppm), margins trimmed."""
    for tool in ("libreoffice", "pdftoppm"):
        if shutil.which(tool) is None:
            sys.exit(f"render_report: {tool} not found; apt-get install -y libreoffice-calc poppler-utils")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        src = one_sheet_copy(xlsx, sheet, tmp_dir / "sheet.xlsx")
        subprocess.run(["libreoffice", f"-env:UserInstallation=file://{tmp_dir}/lo", "--headless",
                        "--convert-to", "pdf", "--outdir", str(tmp_dir), str(src)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
        subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-f", "1", "-l", "1", "-singlefile",
                        str(tmp_dir / "sheet.pdf"), str(tmp_dir / "page")], check=True, timeout=120)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_dir / "page.png", out_png)
    crop(out_png)
    return out_png


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("xlsx", type=Path, nargs="?", help="report.xlsx to render")
    ap.add_argument("--demo", action="store_true", help="build a demo report first and render that")
    ap.add_argument("--sheet", action="append", default=None, help="sheet to render (repeatable)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ap.add_argument("--dpi", type=int, default=160)
    args = ap.parse_args()
    if args.demo:
        demo_dir = Path(tempfile.mkdtemp(prefix="monitor-demo-"))
        args.xlsx = demo_reports(demo_dir)
        print(f"demo reports in {demo_dir}")
    if args.xlsx is None:
        ap.error("give a report.xlsx or --demo")
    for sheet in args.sheet or ["Summary", "Detections"]:
        png = render(args.xlsx, sheet, args.out / f"report_{sheet.lower().replace(' ', '_')}.png", args.dpi)
        print(png)


if __name__ == "__main__":
    main()
