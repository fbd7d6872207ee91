"""Reports people review, from plain DataFrames: CSVs, ``report.xlsx``, Raven tables, PNG plots.

``write_reports`` is called at the end of every run and by ``monitor report OUT_DIR``. Every file
is written to a temp file in OUT_DIR and renamed, so an interrupted write leaves the previous
report intact. Heavy imports (pandas, openpyxl, matplotlib) happen inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)


def raven_band_hz(preprocessing: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) for Raven selections: the model's band; no edge -> 0 / Nyquist after resampling."""
    pre = preprocessing or {}
    band = pre.get("band") or {}
    sr_hz = float((pre.get("resample") or {}).get("sample_rate_hz") or 16000)
    low = band.get("low_hz")
    high = band.get("high_hz")
    return float(low or 0.0), float(min(high, sr_hz / 2) if high else sr_hz / 2)


def write_reports(out_dir: Path, results: Any, *, workbook: Path | None = None) -> dict[str, Path]:
    """Write recordings/segments/detections CSVs, the workbook, raven/ and (with matplotlib) plots/ from one
    ``results.Results``. ``workbook``: where the workbook goes (default ``out_dir/report.xlsx``); the
    returned mapping names it under ``report.xlsx``."""
    from monitor.report.presence import presence
    from monitor.report.raven import write_raven
    from monitor.report.tables import write_tables
    from monitor.report.workbook import write_workbook

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_tables(out_dir, results)
    tables = presence(results)
    paths["report.xlsx"] = write_workbook(workbook or out_dir / "report.xlsx", results, presence_tables=tables)
    low_hz, high_hz = raven_band_hz(results.run.preprocessing)
    paths["raven"] = out_dir / "raven"
    for p in write_raven(out_dir, results.detections, low_hz, high_hz):
        paths[f"raven/{p.name}"] = p
    try:
        from monitor.report.plots import write_plots
    except ImportError:
        log.warning("matplotlib is not installed: no PNG plots in plots/ (pip install 'monitor[plots]')")
    else:
        paths.update(write_plots(out_dir, tables))
    return paths
