"""Reports from the results store's tables: CSVs, ``report.xlsx``, Raven selection tables, PNG plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)


def write_reports(out_dir: Path, *, recordings, segments, detections, run_info: dict[str, Any],
                  input_dir: Path) -> dict[str, Path]:
    """Write recordings/segments/detections CSVs, report.xlsx, raven/ and (with matplotlib) plots/."""
    from monitor.report.raven import write_raven
    from monitor.report.tables import write_tables
    from monitor.report.workbook import write_workbook

    out_dir = Path(out_dir)
    labels = list(run_info.get("labels", []))
    paths = write_tables(out_dir, recordings, segments, detections, labels)
    paths["report.xlsx"] = write_workbook(out_dir / "report.xlsx", recordings, segments, detections, run_info,
                                          input_dir)
    band = (run_info.get("preprocessing") or {}).get("band") or {}
    sr = ((run_info.get("preprocessing") or {}).get("resample") or {}).get("sample_rate_hz", 16000)
    low = band.get("low_hz") or 0.0
    high = band.get("high_hz") or sr / 2
    write_raven(out_dir, detections, float(low), float(min(high, sr / 2)))
    paths["raven"] = out_dir / "raven"
    try:
        from monitor.report.plots import write_plots

        paths.update(write_plots(out_dir, detections, recordings, labels))
    except ImportError:
        log.debug("matplotlib not installed: no PNG plots (pip install 'monitor[plots]')")
    return paths


def report_command(out_dir: Path, thresholds: Mapping[str, float]) -> int:
    """``monitor report OUT_DIR``: rebuild every report from the store with (new) thresholds."""
    from monitor.pipeline import rebuild_reports

    info = rebuild_reports(Path(out_dir), dict(thresholds))
    c = info["counts"]
    print(f"monitor: reports rebuilt in {out_dir}: {c['detections']} detections "
          f"(thresholds {', '.join(f'{k}={v:g}' for k, v in info['thresholds'].items())})")
    return 0
