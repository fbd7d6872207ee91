"""Benchmark: how long ``write_reports`` takes for a large results set (no model, no audio).

Synthesises a season of AudioMoth recordings (hour-long files on several devices, 10 s segments,
random per-label scores), builds the ``results.Results`` the reports are written from (thresholds,
detection events, reviews joined on: ``results.build_results``, timed too) and times writing every
report, then each part on its own.

    python benchmarks/report.py [--segments 100000] [--labels 4] [--devices 8] [--out DIR]

The baseline, in the same run, is the same workbook with every row written as openpyxl cells
(``write_workbook(..., fast_rows=False)``). The last line is
``report: <N> segment rows, <M> detections written in <S> s; workbook <A> s vs <B> s openpyxl cells (<R>x)``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np


def synthesise(n_segments: int, n_labels: int, n_devices: int, seed: int = 0):
    """recordings, segments, run_info as ``monitor.results.load_results`` shapes them."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels = [f"species_{i}" for i in range(n_labels)]
    per_file = 360  # one hour of 10 s segments
    n_files = -(-n_segments // per_file)
    tz = timezone(timedelta(hours=-7))
    rec_rows, seg_parts = [], []
    for i in range(n_files):
        dev = f"24E1440{i % n_devices:09X}"
        start = datetime(2023, 4, 1, 19, 0, tzinfo=tz) + timedelta(days=i // (n_devices * 10), hours=i // n_devices % 10)
        n = min(per_file, n_segments - i * per_file)
        rel = f"{dev}/{start:%Y%m%d_%H%M%S}.WAV"
        rec_rows.append(dict(deployment=dev, file=rel, status="ok", reason="", recorder="AudioMoth", device_id=dev, deployment_id="",
                             firmware="1.10.1", start_time=start.isoformat(), utc_offset="-07:00",
                             temperature_c=round(float(rng.uniform(2, 15)), 1), battery_v=round(float(rng.uniform(3.6, 4.8)), 1),
                             gain="medium", sample_rate_hz=48000, channels=1, duration_s=10.0 * n, segments=n,
                             latitude=np.nan, longitude=np.nan, filter="", trigger="", stop_reason="", comment="",
                             warnings="", input_dir="/card"))
        s0 = 10.0 * np.arange(n)
        seg = pd.DataFrame({"deployment": dev, "file": rel, "segment": np.arange(n), "start_s": s0, "end_s": s0 + 10.0,
                            "start_time": [(start + timedelta(seconds=float(s))).isoformat() for s in s0]})
        for lab in labels:
            seg[lab] = rng.random(n)
        seg_parts.append(seg)
    from monitor.results import recordings_frame

    recordings = recordings_frame(rec_rows)
    segments = pd.concat(seg_parts, ignore_index=True)
    info = {"model": {"name": "bench", "version": "1.0", "sha256": "0" * 64, "path": ""}, "labels": labels,
            "thresholds": {lab: 0.5 for lab in labels}, "task": "multilabel",
            "preprocessing": {"band": {"low_hz": 200.0, "high_hz": 6000.0}, "resample": {"sample_rate_hz": 16000}},
            "package_version": "bench", "command": "benchmarks/report.py", "input_dir": "/card", "out_dir": "",
            "started": "2023-05-01T08:00:00+00:00", "ended": "2023-05-01T09:00:00+00:00"}
    return recordings, segments, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=100_000)
    ap.add_argument("--labels", type=int, default=4)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="keep the reports here (default: a temp folder)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the openpyxl-cells workbook baseline")
    args = ap.parse_args()

    from monitor.report import raven_band_hz, write_reports
    from monitor.report.presence import presence
    from monitor.report.raven import write_raven
    from monitor.report.tables import write_tables
    from monitor.report.workbook import write_workbook
    from monitor.results import RunInfo, build_results

    t = time.perf_counter()
    recordings, segments, info = synthesise(args.segments, args.labels, args.devices)
    synth = time.perf_counter() - t
    t = time.perf_counter()
    run = RunInfo.from_json(info)
    results = build_results(recordings, segments, run.labels, run.thresholds, run)
    build = time.perf_counter() - t
    detections = results.detections
    print(f"synthesised {len(recordings)} files, {len(segments)} segments in {synth:.1f} s; "
          f"{len(detections)} detections")

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        write_reports(out, results)
        total = build + time.perf_counter() - t

        parts = [("Results: thresholds, detection events, reviews joined", build)]
        t = time.perf_counter()
        write_tables(out, results)
        parts.append(("CSVs (recordings, segments, detections)", time.perf_counter() - t))
        t = time.perf_counter()
        p = presence(results)
        parts.append(("presence tables", time.perf_counter() - t))
        t = time.perf_counter()
        write_workbook(out / "report.xlsx", results, presence_tables=p)
        wb_fast = time.perf_counter() - t
        parts.append(("report.xlsx", wb_fast))
        wb_slow = None
        if not args.no_baseline:
            t = time.perf_counter()
            write_workbook(out / "baseline.xlsx", results, presence_tables=p, fast_rows=False)
            wb_slow = time.perf_counter() - t
            parts.append(("baseline: report.xlsx, every row as openpyxl cells (not part of the total)", wb_slow))
        t = time.perf_counter()
        write_raven(out, detections, *raven_band_hz(info["preprocessing"]))
        parts.append((f"raven/ ({detections['file'].nunique()} tables)", time.perf_counter() - t))
        try:
            from monitor.report.plots import write_plots

            t = time.perf_counter()
            write_plots(out, p)
            parts.append(("plots/ (matplotlib)", time.perf_counter() - t))
        except ImportError:
            pass
        size_mb = (out / "report.xlsx").stat().st_size / 1e6

    print("\n| part | seconds |\n|---|---:|")
    for name, s in parts:
        print(f"| {name} | {s:.2f} |")
    print(f"| **Results + write_reports (all)** | **{total:.2f}** |")
    print(f"\nreport.xlsx: {size_mb:.1f} MB")
    vs = f"; workbook {wb_fast:.1f} s vs {wb_slow:.1f} s openpyxl cells ({wb_slow / wb_fast:.1f}x)" if wb_slow else ""
    print(f"report: {len(segments)} segment rows, {len(detections)} detections written in {total:.1f} s{vs}")


if __name__ == "__main__":
    main()
