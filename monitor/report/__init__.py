"""Reports people review, from plain DataFrames: CSVs, ``report.xlsx``, Raven tables, PNG plots.

``write_reports`` is called at the end of every run and by ``monitor report OUT_DIR``. Every file
is written to a temp file in OUT_DIR and renamed, so an interrupted write leaves the previous
report intact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from monitor.config import Preprocess
from monitor.report import plots
from monitor.report.presence import presence
from monitor.report.raven import write_raven
from monitor.report.tables import write_tables
from monitor.report.workbook import write_workbook

log = logging.getLogger(__name__)


def raven_band_hz(preprocessing: Mapping[str, Any]) -> tuple[float, float]:
    """(low, high) for Raven selections: the model's band; no edge -> 0 / Nyquist after resampling."""
    pre = Preprocess.from_dict(dict(preprocessing or {}))
    nyquist_hz = pre.resample.sample_rate_hz / 2
    low, high = pre.band.low_hz, pre.band.high_hz
    return float(low or 0.0), float(min(high, nyquist_hz) if high else nyquist_hz)


def write_reports(out_dir: Path, results: Any, *, workbook: Path | None = None) -> dict[str, Path]:
    """Write recordings/segments/detections CSVs, the workbook, raven/ and (with matplotlib) plots/ from one
    ``results.Results``. ``workbook``: where the workbook goes (default ``out_dir/report.xlsx``); the
    returned mapping names it under ``report.xlsx``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_tables(out_dir, results)
    tables = presence(results)
    paths["report.xlsx"] = write_workbook(workbook or out_dir / "report.xlsx", results, presence_tables=tables)
    low_hz, high_hz = raven_band_hz(results.run.preprocessing)
    paths["raven"] = out_dir / "raven"
    for p in write_raven(out_dir, results.detections, low_hz, high_hz):
        paths[f"raven/{p.name}"] = p
    if plots.available():
        paths.update(plots.write_plots(out_dir, tables))
    else:
        log.warning("matplotlib is not installed: no PNG plots in plots/ (pip install 'monitor[plots]')")
    return paths
